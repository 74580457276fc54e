package devstack

import "testing"

func TestSharedBuffers(t *testing.T) {
	const gib = 1 << 30
	for _, c := range []struct {
		mem  uint64
		want string
	}{
		{0, "128MB"},         // memory unknown: PostgreSQL's default
		{512 << 20, "128MB"}, // never below the default
		{8 * gib, "1024MB"},  // an eighth
		{24 * gib, "2048MB"}, // at most 2 GB
		{256 * gib, "2048MB"},
	} {
		if got := sharedBuffers(c.mem); got != c.want {
			t.Errorf("sharedBuffers(%d) = %s, want %s", c.mem, got, c.want)
		}
	}
	if memTotal() == 0 {
		t.Error("memTotal read no MemTotal from /proc/meminfo")
	}
}

package devstack

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestStackFileRoundTrip(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stack.json")
	want := StackFile{
		Gateways: []string{"http://127.0.0.1:1001", "http://127.0.0.1:1002"},
		Debug:    map[string]string{"gateway-1": "http://127.0.0.1:2001", "auth": "http://127.0.0.1:2002"},
		Pids:     map[string]int{"gateway-1": 10, "postgres": 11, "nats-server": 12},
		Postgres: "postgres://x", Redis: "redis://y", NATS: "nats://z",
	}
	if err := WriteStackFile(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadStackFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("folder holds %d entries, want only stack.json", len(entries))
	}
}

func TestReadStackFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, content := range map[string]string{
		"not json":    "{",
		"no gateways": `{"gateways":[]}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(dir, name+".json")
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := ReadStackFile(path); err == nil {
				t.Error("no error")
			}
		})
	}
	if _, err := ReadStackFile(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("no error for a missing file")
	}
}

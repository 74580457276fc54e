package procstat

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestParseStat(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		in      string
		want    Stat
		wantErr bool
	}{
		"plain": {
			in:   "4242 (gateway) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 12 0 100 1000 500",
			want: Stat{PPid: 1, CPUTicks: 325},
		},
		"name with spaces and parentheses": {
			in:   "77 (postgres: a (b) c) S 70 77 77 0 -1 4194560 1 0 0 0 3 4 5 6 20 0",
			want: Stat{PPid: 70, CPUTicks: 7},
		},
		"truncated": {in: "1 (x) S 0 1 1", wantErr: true},
		"no name":   {in: "garbage", wantErr: true},
		"bad utime": {in: "1 (x) S 0 1 1 0 -1 0 0 0 0 0 zz 1 0 0", wantErr: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseStat([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseRSS(t *testing.T) {
	t.Parallel()
	got, err := ParseRSS([]byte("Name:\tgateway\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t7\n"))
	if err != nil || got != 12345 {
		t.Errorf("ParseRSS = %d, %v; want 12345", got, err)
	}
	if got, err := ParseRSS([]byte("Name:\tkthreadd\n")); err != nil || got != 0 {
		t.Errorf("ParseRSS without VmRSS = %d, %v; want 0", got, err)
	}
	if _, err := ParseRSS([]byte("VmRSS:\t12 MB\n")); err == nil {
		t.Error("no error for an unknown unit")
	}
}

// TestReadTree builds a fake /proc with a parent, a child and a grandchild
// and an unrelated process: the parent's CPU includes its descendants only.
func TestReadTree(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(pid, ppid int, utime, stime int64, rss string) {
		d := filepath.Join(dir, strconv.Itoa(pid))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := strconv.Itoa(pid) + " (p) S " + strconv.Itoa(ppid) + " 0 0 0 -1 0 0 0 0 0 " +
			strconv.FormatInt(utime, 10) + " " + strconv.FormatInt(stime, 10) + " 0 0 20 0"
		if err := os.WriteFile(filepath.Join(d, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "status"), []byte("VmRSS:\t"+rss+" kB\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(10, 1, 100, 50, "1000")
	write(11, 10, 20, 10, "200")
	write(12, 11, 5, 5, "100")
	write(13, 1, 999, 999, "300")
	got, err := Read(dir, 10)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Sample{CPUSeconds: 1.9, RSSKiB: 1000}); got != want {
		t.Errorf("Read = %+v, want %+v", got, want)
	}
	if _, err := Read(dir, 99); err == nil {
		t.Error("no error for a missing process")
	}
}

func TestReadSelf(t *testing.T) {
	t.Parallel()
	s, err := Read("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSSKiB <= 0 {
		t.Errorf("own RSS = %d KiB", s.RSSKiB)
	}
}

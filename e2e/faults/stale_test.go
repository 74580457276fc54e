package faults

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestRemoveStale: of the package's temporary folders, those whose owner
// process is gone are removed; the running owner's, and one just made
// without an owner file yet, stay.
func TestRemoveStale(t *testing.T) {
	t.Parallel()
	// A process that has ended: its id names no process now.
	done := exec.Command("true")
	if err := done.Run(); err != nil {
		t.Fatal(err)
	}
	parent := t.TempDir()
	mk := func(name, owner string) string {
		dir := filepath.Join(parent, tempPrefix+name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if owner != "" {
			if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(owner+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	live := mk("live", strconv.Itoa(os.Getpid()))
	fresh := mk("fresh", "")
	dead := mk("dead", strconv.Itoa(done.Process.Pid))
	garbled := mk("garbled", "not a pid")
	other := filepath.Join(parent, "other-folder")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	removeStale(parent)
	for dir, keep := range map[string]bool{live: true, fresh: true, other: true, dead: false, garbled: false} {
		_, err := os.Stat(dir)
		if exists := err == nil; exists != keep {
			t.Errorf("%s: exists %t, want %t", filepath.Base(dir), exists, keep)
		}
	}
}

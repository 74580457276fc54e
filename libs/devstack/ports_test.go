package devstack

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// Chosen ports are distinct, below the kernel's ephemeral range (where no
// outgoing connection takes them) and reserved against our other processes.
func TestFreePortsAreReservedBelowTheEphemeralRange(t *testing.T) {
	got, err := FreePorts(50)
	if err != nil {
		t.Fatal(err)
	}
	if ports.fallback {
		t.Skip("the ephemeral range leaves no room below it here: the kernel assigns ports")
	}
	seen := map[int]bool{}
	for _, p := range got {
		if p < ports.lo || p >= ports.hi {
			t.Errorf("port %d outside [%d, %d)", p, ports.lo, ports.hi)
		}
		if seen[p] {
			t.Errorf("port %d handed out twice", p)
		}
		seen[p] = true
		if ports.lockDir == "" {
			continue
		}
		// A second open file description is what another process would
		// have: its lock must be refused.
		f, err := os.Open(filepath.Join(ports.lockDir, strconv.Itoa(p)))
		if err != nil {
			t.Fatal(err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			t.Errorf("port %d: another process could lock its reservation (err %v)", p, err)
		}
	}
}

// A port another process reserved is not taken.
func TestReservedPortIsSkipped(t *testing.T) {
	if _, err := FreePort(); err != nil { // sets the range up
		t.Fatal(err)
	}
	if ports.fallback || ports.lockDir == "" {
		t.Skip("no reservations here")
	}
	ports.mu.Lock()
	defer ports.mu.Unlock()
	// The first port from the bottom that no process reserves yet, taken
	// on a separate open file as another process would.
	var f *os.File
	p := ports.lo
	for ; p < ports.lo+100; p++ {
		if ports.held[p] != nil {
			continue
		}
		var err error
		if f, err = os.OpenFile(filepath.Join(ports.lockDir, strconv.Itoa(p)), os.O_CREATE|os.O_RDWR, 0o600); err != nil {
			t.Fatal(err)
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			break
		}
		f.Close()
		f = nil
	}
	if f == nil {
		t.Fatal("no port to reserve among the lowest 100")
	}
	defer f.Close()
	if reserve(p) {
		t.Fatalf("reserve(%d) succeeded while another holder has it", p)
	}
	if ports.held[p] != nil {
		t.Fatalf("port %d recorded as held", p)
	}
}

package devstack

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// A chosen port must stay free until the server it is meant for binds it,
// which can be seconds later (a stack starts its services one after
// another). Two things could take it in between:
//
//   - an outgoing connection: the kernel picks source ports from its
//     ephemeral range, so FreePort chooses below that range;
//   - another of our processes choosing at the same time (tests of several
//     packages run at once): each chosen port is reserved by an flock on a
//     file named after it, held until the choosing process exits, and ports
//     already chosen by this process are never handed out again.
//
// Where the ephemeral range leaves too little room below it, FreePort falls
// back to a port the kernel assigns (free a moment ago, nothing more).

const (
	// lowestPort is where the search starts: above the ports well-known
	// servers are usually configured on.
	lowestPort = 10000
	// minRoom is how many ports below the ephemeral range are needed to
	// choose there.
	minRoom = 2000
)

var ports struct {
	mu       sync.Mutex
	held     map[int]*os.File // reservations, kept open until exit
	given    map[int]bool     // handed out by this process
	lo, hi   int              // the range chosen from, [lo, hi)
	inited   bool
	lockDir  string // "" when reservations are not possible
	fallback bool   // let the kernel assign
}

func initPorts() {
	ports.held = map[int]*os.File{}
	ports.given = map[int]bool{}
	ports.inited = true
	ephemeralLow := 32768 // Linux's default
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				ephemeralLow = n
			}
		}
	}
	if ephemeralLow-lowestPort < minRoom {
		ports.fallback = true
		return
	}
	ports.lo, ports.hi = lowestPort, ephemeralLow
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("communications-ports-%d", os.Getuid()))
	if err := os.MkdirAll(dir, 0o700); err == nil {
		ports.lockDir = dir
	}
}

// FreePort returns a TCP port on 127.0.0.1 that is free and reserved for
// the caller until this process exits (see above). Servers started on it are
// checked for readiness, so a port taken anyway shows up as a start error.
func FreePort() (int, error) {
	ports.mu.Lock()
	defer ports.mu.Unlock()
	if !ports.inited {
		initPorts()
	}
	if ports.fallback {
		return kernelPort()
	}
	n := ports.hi - ports.lo
	start := rand.IntN(n)
	for i := range n {
		p := ports.lo + (start+i)%n
		if ports.given[p] || !reserve(p) {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			unreserve(p) // someone else listens there
			continue
		}
		_ = l.Close()
		ports.given[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("free port: none free in %d-%d", ports.lo, ports.hi-1)
}

// reserve takes the cross-process reservation of port p, or reports that
// another process holds it. Without a lock folder every port counts as
// reserved.
func reserve(p int) bool {
	if ports.lockDir == "" {
		return true
	}
	if ports.held[p] != nil {
		return true
	}
	f, err := os.OpenFile(filepath.Join(ports.lockDir, strconv.Itoa(p)), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return true // cannot coordinate; the listen check still applies
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return !errors.Is(err, syscall.EWOULDBLOCK)
	}
	ports.held[p] = f
	return true
}

// unreserve gives up the reservation of port p, if this process holds it.
func unreserve(p int) {
	if f := ports.held[p]; f != nil {
		_ = f.Close()
		delete(ports.held, p)
	}
}

// kernelPort returns a port the kernel assigns, free a moment ago.
func kernelPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreePorts returns n distinct ports (see FreePort).
func FreePorts(n int) ([]int, error) {
	seen := map[int]bool{}
	var out []int
	for len(out) < n {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

package scenario

import (
	"fmt"
	"syscall"
)

// filesReserve is the open files kept free besides the websockets (HTTP
// connections, /proc reads, standard streams).
const filesReserve = 100

// ensureFiles raises the soft limit on open files to the hard limit and
// fails clearly when conns websockets still do not fit in this process.
func ensureFiles(conns int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("open files limit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raise open files limit: %w", err)
		}
	}
	if need := uint64(conns) + filesReserve; need > lim.Cur {
		return fmt.Errorf("%d connections need about %d open files, but one process may hold %d here: "+
			"use fewer connections, or run several load generator processes", conns, need, lim.Cur)
	}
	return nil
}

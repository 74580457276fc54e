// Command history runs the history service: the history writer, which stores
// the accepted messages of the message stream with their per-chat sequence
// numbers and publishes them for fanout, and history page reads.
package main

import (
	"os"

	"github.com/KimMachineGun/automemlimit/memlimit"

	"github.com/communications/communications/libs/svcmain"
	"github.com/communications/communications/services/history/historysvc"
)

func main() {
	// The service runs with GOGC=400 (README, "Runtime settings"), so its
	// heap may grow to five times what is live. In a container with a
	// memory limit, a soft limit of 90 % of it (unless GOMEMLIMIT is set)
	// makes the collector run before the heap reaches the container's
	// limit. Without a limit (no cgroup, or none set) nothing changes, so
	// the error is of no use.
	_, _ = memlimit.Set()
	os.Exit(svcmain.Main("history", historysvc.EnvPrefix, historysvc.Run))
}

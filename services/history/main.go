// Command history runs the history service: the history writer, which stores
// the accepted messages of the message stream with their per-chat sequence
// numbers and publishes them for fanout, and history page reads.
package main

import (
	"os"

	"github.com/communications/communications/libs/svcmain"
	"github.com/communications/communications/services/history/historysvc"
)

func main() {
	os.Exit(svcmain.Main("history", historysvc.EnvPrefix, historysvc.Run))
}

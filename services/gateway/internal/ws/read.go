package ws

import (
	"context"

	"github.com/communications/communications/libs/protocol"
)

// handleRead moves the user's read position in a chat.
func (c *Conn) handleRead(_ context.Context, ev protocol.ClientEvent) {
	c.notYet(ev, "read positions")
}

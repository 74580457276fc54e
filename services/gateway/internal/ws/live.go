package ws

import (
	"context"

	"github.com/communications/communications/libs/protocol"
)

// handleTyping tells the members viewing a chat that the user types.
func (c *Conn) handleTyping(_ context.Context, ev protocol.ClientEvent) {
	c.notYet(ev, "typing indicators")
}

// handleView records which chat the connection shows.
func (c *Conn) handleView(_ context.Context, ev protocol.ClientEvent) {
	c.notYet(ev, "presence")
}

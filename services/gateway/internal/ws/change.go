package ws

import (
	"context"

	"github.com/communications/communications/libs/protocol"
)

// handleChange edits or deletes one of the user's messages.
func (c *Conn) handleChange(_ context.Context, ev protocol.ClientEvent) {
	c.notYet(ev, "editing and deleting messages")
}

// notYet answers an event this gateway does not serve yet.
func (c *Conn) notYet(ev protocol.ClientEvent, what string) {
	c.deliverJSON(protocol.Error{Type: protocol.TypeError, ID: ev.ID, Code: protocol.CodeBadRequest, Message: what + " is not available yet"})
}

package ws

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
)

// handleChange edits or deletes one of the user's messages (ev.Seq). The
// chat service decides: membership, and the target is the user's own
// message, not deleted. Like sends, changes of one connection are accepted
// in the order sent.
func (c *Conn) handleChange(ctx context.Context, ev protocol.ClientEvent) {
	ctx, span := c.srv.tracer.Start(ctx, "ws "+ev.Type, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.Int64("chat.id", ev.ChatID), attribute.Int64("chat.target_seq", ev.Seq),
			attribute.Int64("user.id", c.user.ID)))
	defer span.End()
	res, err := c.srv.up.Change(ctx, busapi.ChangeRequest{
		ChatID: ev.ChatID, SenderID: c.user.ID, Sender: c.user.Username, Kind: ev.Type,
		TargetSeq: ev.Seq, ClientMsgID: ev.ClientMsgID, Text: ev.Text,
	})
	c.answerAccepted(ctx, span, ev, res, err)
}

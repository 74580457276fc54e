package ws

import (
	"context"
	"encoding/json"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
)

// handleRead moves the user's read position in a chat. The chat service
// checks membership and the sequence, stores the position (only ever
// forward) and announces it; every connection of the user, this one
// included, then gets read_position from ApplyReadEvent. A read that did
// not move the position (another device was further) is answered on this
// connection alone with the stored position; a refused one with an error.
func (c *Conn) handleRead(ctx context.Context, ev protocol.ClientEvent) {
	ctx, span := c.srv.tracer.Start(ctx, "ws read", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.Int64("chat.id", ev.ChatID), attribute.Int64("user.id", c.user.ID)))
	defer span.End()
	res, err := c.srv.up.Read(ctx, busapi.ReadRequest{UserID: c.user.ID, ChatID: ev.ChatID, Seq: ev.Seq})
	if err != nil {
		code := busapi.CodeOf(err)
		msg := "internal error"
		if be, ok := errors.AsType[*busapi.Error](err); ok {
			msg = be.Message
		}
		if code == protocol.CodeInternal || code == protocol.CodeUnavailable {
			c.srv.log.WarnContext(ctx, "read failed", "err", err)
			span.SetStatus(codes.Error, err.Error())
		}
		c.deliverJSON(protocol.Error{Type: protocol.TypeError, ID: ev.ID, Code: code, Message: msg, Retryable: code.Retryable()})
		return
	}
	if !res.Moved {
		c.deliverJSON(protocol.ReadPosition{Type: protocol.TypeReadPosition, ChatID: res.ChatID, Seq: res.Seq, Unread: res.Unread})
	}
}

// ApplyReadEvent tells every local connection of the user that the user's
// read position in a chat moved (on any device, through any gateway).
func (s *Server) ApplyReadEvent(ctx context.Context, ev busapi.ReadEvent) {
	conns := s.connsOf(ev.UserID)
	if len(conns) == 0 {
		return
	}
	b, err := json.Marshal(protocol.ReadPosition{Type: protocol.TypeReadPosition, ChatID: ev.ChatID, Seq: ev.Seq, Unread: ev.Unread})
	if err != nil {
		s.log.ErrorContext(ctx, "encode read position", "err", err)
		return
	}
	for _, c := range conns {
		c.Deliver(b)
	}
}

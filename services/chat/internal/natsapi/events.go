package natsapi

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/services/chat/internal/chats"
)

// MsgPublisher publishes one core NATS message (*nats.Conn does).
type MsgPublisher interface {
	PublishMsg(msg *nats.Msg) error
}

// Events publishes the domain's chat events as busapi.ChatEvent on
// subjects.ChatEvents, with core NATS (at most once, to every gateway
// subscribed), the trace context in the headers. It implements
// chats.Events.
type Events struct {
	nc      MsgPublisher
	subject string
}

// NewEvents returns an Events publishing with nc.
func NewEvents(nc MsgPublisher, subj subjects.Subjects) *Events {
	return &Events{nc: nc, subject: subj.ChatEvents()}
}

// ChatChanged publishes ev.
func (e *Events) ChatChanged(ctx context.Context, ev chats.Event) error {
	data, err := json.Marshal(busapi.ChatEvent{
		Kind: string(ev.Kind), Chat: toProtocol(ev.Chat), Added: ev.Added, Removed: ev.Removed,
	})
	if err != nil {
		return fmt.Errorf("encode chat event: %w", err)
	}
	msg := nats.NewMsg(e.subject)
	msg.Data = data
	natsbus.Inject(ctx, msg)
	if err := e.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("publish chat event: %w", err)
	}
	return nil
}

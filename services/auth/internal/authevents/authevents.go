// Package authevents publishes the auth service's events on NATS: core NATS
// (at most once, to every subscriber), JSON payloads of the busapi types, the
// trace context in the headers.
package authevents

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
)

// Publisher publishes events on one connection. It implements
// accounts.Events.
type Publisher struct {
	nc   *nats.Conn
	subj subjects.Subjects
}

// New returns a Publisher on nc.
func New(nc *nats.Conn, subj subjects.Subjects) *Publisher {
	return &Publisher{nc: nc, subj: subj}
}

// SessionRevoked publishes busapi.SessionRevoked on
// subjects.AuthSessionRevoked. It returns once the message is buffered on
// the connection, which sends messages in order: a reply sent afterwards on
// the same connection reaches the NATS server after the event.
func (p *Publisher) SessionRevoked(ctx context.Context, id string, userID int64) error {
	data, err := json.Marshal(busapi.SessionRevoked{SessionID: id, UserID: userID})
	if err != nil {
		return fmt.Errorf("encode session revoked: %w", err)
	}
	msg := nats.NewMsg(p.subj.AuthSessionRevoked())
	msg.Data = data
	natsbus.Inject(ctx, msg)
	if err := p.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("publish %s: %w", msg.Subject, err)
	}
	return nil
}

// Package fanoutpub publishes stored messages to the Redis pub/sub channels
// of their chats, from which every gateway replica delivers them to the
// chats' members. Redis pub/sub is at most once: clients fill gaps from
// history.
package fanoutpub

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/communications/communications/libs/fanout"
	"github.com/communications/communications/services/history/internal/writer"
)

// Publisher implements writer.Publisher on Redis.
type Publisher struct {
	rdb    redis.UniversalClient
	prefix string
}

// New returns a Publisher publishing on rdb to the channels
// fanout.Channel(prefix, chatID).
func New(rdb redis.UniversalClient, prefix string) *Publisher {
	return &Publisher{rdb: rdb, prefix: prefix}
}

// Publish publishes each event, in order, in one pipeline. Each payload is
// a fanout.Envelope holding the protocol.Message event (a message, an edit
// or a deletion, with its kind and target), its acceptance time and its
// trace context.
func (p *Publisher) Publish(ctx context.Context, events []writer.Event) error {
	if len(events) == 0 {
		return nil
	}
	pipe := p.rdb.Pipeline()
	for _, e := range events {
		m := e.Message
		ev, err := json.Marshal(m.Event())
		if err != nil {
			return fmt.Errorf("encode message event: %w", err)
		}
		var accepted int64
		if !e.Duplicate && !m.SentAt.IsZero() {
			// A new entry's time is when the chat service accepted it.
			accepted = m.SentAt.UnixMicro()
		}
		payload, err := json.Marshal(fanout.Envelope{
			ChatID: m.ChatID, Seq: m.Seq, SenderID: m.SenderID, Duplicate: e.Duplicate,
			AcceptedAt: accepted, Trace: e.Trace, Event: ev,
		})
		if err != nil {
			return fmt.Errorf("encode fanout envelope: %w", err)
		}
		pipe.Publish(ctx, fanout.Channel(p.prefix, m.ChatID), payload)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("publish %d events to redis: %w", len(events), err)
	}
	return nil
}

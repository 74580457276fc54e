// Package fanoutpub publishes stored messages to the Redis pub/sub channels
// of their chats, from which every gateway replica delivers them to the
// chats' members. Redis pub/sub is at most once: clients fill gaps from
// history.
package fanoutpub

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/communications/communications/libs/fanout"
	"github.com/communications/communications/services/history/internal/msgjson"
	"github.com/communications/communications/services/history/internal/writer"
)

// Publisher implements writer.Publisher on Redis.
type Publisher struct {
	rdb    redis.UniversalClient
	prefix string

	mu   sync.Mutex // one Publish at a time uses buf
	buf  []byte     // the payloads of one Publish, back to back
	ends []int
}

// New returns a Publisher publishing on rdb to the channels
// fanout.Channel(prefix, chatID).
func New(rdb redis.UniversalClient, prefix string) *Publisher {
	return &Publisher{rdb: rdb, prefix: prefix}
}

// Publish publishes each event, in order, in one pipeline. Each payload is
// a fanout.Envelope holding the protocol.Message event (a message, an edit
// or a deletion, with its kind and target), its acceptance time and its
// trace context, encoded by msgjson.AppendEnvelope into one buffer reused
// from call to call.
func (p *Publisher) Publish(ctx context.Context, events []writer.Event) error {
	if len(events) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	buf, ends := p.buf[:0], p.ends[:0]
	for _, e := range events {
		m := e.Message
		var accepted int64
		if !e.Duplicate && !m.SentAt.IsZero() {
			// A new entry's time is when the chat service accepted it.
			accepted = m.SentAt.UnixMicro()
		}
		ev := m.Event()
		var err error
		buf, err = msgjson.AppendEnvelope(buf, &fanout.Envelope{
			ChatID: m.ChatID, Seq: m.Seq, SenderID: m.SenderID, Duplicate: e.Duplicate,
			AcceptedAt: accepted, Trace: e.Trace,
		}, &ev)
		if err != nil {
			return fmt.Errorf("encode fanout envelope: %w", err)
		}
		ends = append(ends, len(buf))
	}
	// Slices of buf only now: appending may have moved it.
	pipe := p.rdb.Pipeline()
	start := 0
	for i, e := range events {
		pipe.Publish(ctx, fanout.Channel(p.prefix, e.Message.ChatID), buf[start:ends[i]:ends[i]])
		start = ends[i]
	}
	_, err := pipe.Exec(ctx)
	// Redis has the payloads (or the pipeline failed): buf is free again,
	// unless it grew too large to keep.
	if cap(buf) <= 4<<20 {
		p.buf, p.ends = buf, ends
	}
	if err != nil {
		return fmt.Errorf("publish %d events to redis: %w", len(events), err)
	}
	return nil
}

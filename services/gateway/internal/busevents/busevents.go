// Package busevents receives the events other services broadcast to every
// gateway over NATS (no queue group): sessions revoked at logout, chats
// changed, and read positions moved. Each is applied to this replica's own
// connections.
package busevents

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
)

// maxConcurrentChatEvents bounds the chat events applied at once.
const maxConcurrentChatEvents = 32

// Connections is what the events act on.
type Connections interface {
	RevokeSession(sessionID string) int
	ApplyChatEvent(ctx context.Context, ev busapi.ChatEvent)
	ApplyReadEvent(ctx context.Context, ev busapi.ReadEvent)
}

// Events applies the events; Wait returns when the ones in progress are done.
type Events struct {
	mu      sync.Mutex
	stopped bool // set by Wait: no chat event is started after it
	running sync.WaitGroup
}

// Wait stops chat events from being started and waits for the ones being
// applied. Call it after ctx (given to Subscribe) has ended and the NATS
// connection has been drained; an event that arrives after it (a drain
// that timed out leaves handlers running) is dropped.
func (e *Events) Wait() {
	e.mu.Lock()
	e.stopped = true
	e.mu.Unlock()
	e.running.Wait()
}

// start counts a chat event in; false once Wait has begun. A WaitGroup's
// Add from zero must not race with its Wait, hence the lock.
func (e *Events) start() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return false
	}
	e.running.Add(1)
	return true
}

// Subscribe subscribes the event subjects until nc is drained or closed.
// Events are applied under ctx.
func Subscribe(ctx context.Context, nc *nats.Conn, subj subjects.Subjects, conns Connections, log *slog.Logger, tp trace.TracerProvider) (*Events, error) {
	e := &Events{}
	tracer := tp.Tracer("github.com/communications/communications/services/gateway/internal/busevents")
	handle := func(name string, apply func(context.Context, []byte) error) nats.MsgHandler {
		return func(msg *nats.Msg) {
			ctx, span := tracer.Start(natsbus.Extract(ctx, msg), name, trace.WithSpanKind(trace.SpanKindConsumer))
			defer span.End()
			if err := apply(ctx, msg.Data); err != nil {
				log.WarnContext(ctx, "bad event", "subject", msg.Subject, "err", err)
			}
		}
	}
	if _, err := nc.Subscribe(subj.AuthSessionRevoked(), handle("session revoked", func(ctx context.Context, data []byte) error {
		var ev busapi.SessionRevoked
		if err := json.Unmarshal(data, &ev); err != nil {
			return err
		}
		if n := conns.RevokeSession(ev.SessionID); n > 0 {
			log.InfoContext(ctx, "closed websockets of a revoked session", "connections", n, "user_id", ev.UserID)
		}
		return nil
	})); err != nil {
		return nil, fmt.Errorf("subscribe session revocations: %w", err)
	}
	// Applying a chat event asks the chat service and may wait on Redis;
	// events are applied concurrently (each one reconciles from the chat
	// service's answer, so their order does not matter), a bounded number
	// at a time.
	slots := make(chan struct{}, maxConcurrentChatEvents)
	if _, err := nc.Subscribe(subj.ChatEvents(), handle("chat event", func(ctx context.Context, data []byte) error {
		var ev busapi.ChatEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			return err
		}
		if !e.start() {
			return nil
		}
		slots <- struct{}{}
		go func() {
			defer func() {
				<-slots
				e.running.Done()
			}()
			conns.ApplyChatEvent(ctx, ev)
		}()
		return nil
	})); err != nil {
		return nil, fmt.Errorf("subscribe chat events: %w", err)
	}
	// A moved read position only queues an event on the user's local
	// connections: applied in the subscription's own goroutine, in order.
	if _, err := nc.Subscribe(subj.ChatEventsRead(), handle("read event", func(ctx context.Context, data []byte) error {
		var ev busapi.ReadEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			return err
		}
		conns.ApplyReadEvent(ctx, ev)
		return nil
	})); err != nil {
		return nil, fmt.Errorf("subscribe read events: %w", err)
	}
	if err := nc.Flush(); err != nil {
		return nil, fmt.Errorf("subscribe events: %w", err)
	}
	return e, nil
}

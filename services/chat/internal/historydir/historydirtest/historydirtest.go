// Package historydirtest is a test double of the history service's
// single-entry request: it answers subjects.HistoryMessage from a set of
// entries the test controls, by sequence or by sender and client message
// id, with message_not_found for anything else, as the history service
// does. The real service is another module.
package historydirtest

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
)

// History holds the entries the double answers with.
type History struct {
	mu      sync.Mutex
	entries []protocol.Message
}

// Add stores entries (each with its ChatID, Seq, SenderID, ClientMsgID).
func (h *History) Add(entries ...protocol.Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.entries = append(h.entries, entries...)
}

func (h *History) find(req busapi.MessageRequest) (protocol.Message, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range h.entries {
		if m.ChatID != req.ChatID {
			continue
		}
		if (req.Seq > 0 && m.Seq == req.Seq) ||
			(req.Seq == 0 && m.SenderID == req.SenderID && m.ClientMsgID == req.ClientMsgID) {
			return m, true
		}
	}
	return protocol.Message{}, false
}

// Serve answers single-entry requests on nc from the returned History
// until the test ends.
func Serve(t testing.TB, nc *nats.Conn, subj subjects.Subjects) *History {
	t.Helper()
	h := &History{}
	srv := natsbus.NewServer(nc, noop.NewTracerProvider(), telemetry.NewLogger(io.Discard, 0), time.Second)
	sub, err := natsbus.Handle(context.Background(), srv, subj.HistoryMessage(), subjects.QueueHistory,
		func(_ context.Context, req busapi.MessageRequest) (protocol.Message, error) {
			m, ok := h.find(req)
			if !ok {
				return protocol.Message{}, busapi.Errorf(protocol.CodeMessageNotFound, "no such entry in the chat")
			}
			m.Type = protocol.TypeMessage
			return m, nil
		})
	if err != nil {
		t.Fatalf("serve history entries: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("serve history entries: %v", err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return h
}

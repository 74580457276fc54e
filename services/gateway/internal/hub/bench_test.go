package hub

import (
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/fanout"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
)

// countSink counts deliveries and keeps nothing.
type countSink struct {
	user int64
	n    int
}

func (s *countSink) UserID() int64                               { return s.user }
func (s *countSink) DeliverMessage(_, _ int64, _ bool, _ []byte) { s.n++ }
func (s *countSink) DeliverEphemeral(int64, []byte)              {}

// BenchmarkDispatch decodes one chat event from Redis and hands it to the
// 50 local connections of its chat (the fanout target's chat size); ns/op
// divided by 50 is the hub's cost per delivery.
func BenchmarkDispatch(b *testing.B) {
	const members = 50
	// No Redis is needed: the benchmark calls dispatch directly.
	hctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	h := New(hctx, redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), "bench",
		telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	sinks := make([]*countSink, members)
	h.chats[7] = map[Sink]struct{}{}
	for i := range sinks {
		sinks[i] = &countSink{user: int64(i + 1)}
		h.chats[7][sinks[i]] = struct{}{}
	}
	event, err := json.Marshal(protocol.Message{Type: protocol.TypeMessage, ChatID: 7, Seq: 41, SenderID: 1, Sender: "alice",
		ClientMsgID: "7f9c2b1e-41", Text: "a typical chat message of some length", SentAt: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)})
	if err != nil {
		b.Fatal(err)
	}
	payload, err := json.Marshal(fanout.Envelope{ChatID: 7, Seq: 41, SenderID: 1, Event: event,
		Trace: map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}})
	if err != nil {
		b.Fatal(err)
	}
	m := &redis.Message{Channel: fanout.Channel("bench", 7), Payload: string(payload)}
	ctx := context.Background()
	var flush []Flusher
	b.ReportAllocs()
	for b.Loop() {
		flush = h.dispatch(ctx, m, flush[:0])
	}
	b.StopTimer()
	if sinks[0].n != b.N {
		b.Fatalf("a sink got %d of %d events", sinks[0].n, b.N)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members), "ns/delivery")
}

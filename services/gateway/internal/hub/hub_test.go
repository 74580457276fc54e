package hub

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/fanout"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

type sink struct {
	mu     sync.Mutex
	events []string
}

func (s *sink) Deliver(ev []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, string(ev))
}

func (s *sink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.events...)
}

func TestFanout(t *testing.T) {
	t.Parallel()
	url, prefix := testenv.Redis(t)
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	h := New(ctx, rdb, prefix, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	a, b := &sink{}, &sink{}
	jctx, jcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer jcancel()
	if err := h.Join(jctx, a, []int64{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := h.Join(jctx, b, []int64{2}); err != nil {
		t.Fatal(err)
	}
	publish := func(chat int64, event string) {
		t.Helper()
		env, err := json.Marshal(fanout.Envelope{Event: json.RawMessage(event)})
		if err != nil {
			t.Fatal(err)
		}
		if err := rdb.Publish(context.Background(), fanout.Channel(prefix, chat), env).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Join returned after Redis confirmed the subscriptions, so nothing
	// published from now on is missed.
	publish(1, `{"n":1}`)
	publish(2, `{"n":2}`)
	publish(3, `{"n":3}`) // nobody local is in chat 3
	testenv.Eventually(t, 5*time.Second, func() bool { return len(a.got()) == 2 && len(b.got()) == 1 }, "deliveries: a=%v b=%v", a.got(), b.got())
	if got := a.got(); got[0] != `{"n":1}` || got[1] != `{"n":2}` {
		t.Errorf("a got %v, want events 1 then 2 as published", got)
	}

	// After a leaves chat 2, only b gets its events; chat 1 is unsubscribed.
	h.Leave(a, []int64{1, 2})
	publish(1, `{"n":4}`)
	publish(2, `{"n":5}`)
	testenv.Eventually(t, 5*time.Second, func() bool { return len(b.got()) == 2 }, "b gets event 5: %v", b.got())
	if got := a.got(); len(got) != 2 {
		t.Errorf("a got %v after leaving, want no more events", got)
	}
	h.mu.RLock()
	_, still := h.channels[fanout.Channel(prefix, 1)]
	h.mu.RUnlock()
	if still {
		t.Error("chat 1 still subscribed after its last local member left")
	}
}

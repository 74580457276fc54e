package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/fanout"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

type sink struct {
	user      int64
	mu        sync.Mutex
	events    []string
	ephemeral []string
}

func (s *sink) DeliverEphemeral(_ int64, ev []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ephemeral = append(s.ephemeral, string(ev))
}

func (s *sink) gotEphemeral() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ephemeral...)
}

func (s *sink) UserID() int64 { return s.user }

func (s *sink) DeliverMessage(_, _ int64, _ bool, ev []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, string(ev))
}

func (s *sink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.events...)
}

func startHub(t *testing.T) (*Hub, *redis.Client, string) {
	t.Helper()
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
	return h, rdb, prefix
}

func publishEnvelope(t *testing.T, rdb *redis.Client, prefix string, env fanout.Envelope) {
	t.Helper()
	b, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.Publish(context.Background(), fanout.Channel(prefix, env.ChatID), b).Err(); err != nil {
		t.Fatal(err)
	}
}

// twoSinks starts a hub with sink a in chats 1 and 2 and sink b in chat 2,
// and returns it with a function that publishes an event to a chat.
func twoSinks(t *testing.T) (h *Hub, a, b *sink, publish func(chat int64, event string)) {
	t.Helper()
	h, rdb, prefix := startHub(t)
	a, b = &sink{}, &sink{}
	jctx, jcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer jcancel()
	if err := h.Join(jctx, a, []int64{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := h.Join(jctx, b, []int64{2}); err != nil {
		t.Fatal(err)
	}
	publish = func(chat int64, event string) {
		t.Helper()
		publishEnvelope(t, rdb, prefix, fanout.Envelope{ChatID: chat, Event: json.RawMessage(event)})
	}
	return h, a, b, publish
}

func TestFanout(t *testing.T) {
	t.Parallel()
	h, a, b, publish := twoSinks(t)
	// Join returned after Redis confirmed the subscriptions, so nothing
	// published from now on is missed.
	publish(1, `{"n":1}`)
	publish(2, `{"n":2}`)
	publish(3, `{"n":3}`) // nobody local is in chat 3
	testenv.EventuallyDescribe(t, 5*time.Second, func() bool { return len(a.got()) == 2 && len(b.got()) == 1 }, func() string { return fmt.Sprintf("deliveries: a=%v b=%v", a.got(), b.got()) })
	// Chats are dispatched side by side: each keeps its order, chats
	// between them need not.
	if got := a.got(); !slices.Contains(got, `{"n":1}`) || !slices.Contains(got, `{"n":2}`) {
		t.Errorf("a got %v, want events 1 and 2", got)
	}

	// After a leaves chat 2, only b gets its events; chat 1 is unsubscribed.
	h.Leave(a, []int64{1, 2})
	publish(1, `{"n":4}`)
	publish(2, `{"n":5}`)
	testenv.EventuallyDescribe(t, 5*time.Second, func() bool { return len(b.got()) == 2 }, func() string { return fmt.Sprintf("b gets event 5: %v", b.got()) })
	if got := a.got(); len(got) != 2 {
		t.Errorf("a got %v after leaving, want no more events", got)
	}
	h.mu.RLock()
	_, still := h.channels[fanout.Channel(h.prefix, 1)]
	h.mu.RUnlock()
	if still {
		t.Error("chat 1 still subscribed after its last local member left")
	}
}

// TestFanoutKeepsEachChatsOrder: the dispatchers take chats side by side,
// and every connection gets each chat's events in the order published.
func TestFanoutKeepsEachChatsOrder(t *testing.T) {
	t.Parallel()
	_, a, b, publish := twoSinks(t)
	var want1, want2 []string
	for i := range 50 {
		want1 = append(want1, fmt.Sprintf(`{"c":1,"i":%d}`, i))
		want2 = append(want2, fmt.Sprintf(`{"c":2,"i":%d}`, i))
		publish(1, want1[i])
		publish(2, want2[i])
	}
	testenv.EventuallyDescribe(t, 5*time.Second, func() bool { return len(a.got()) == 100 }, func() string { return fmt.Sprintf("a got %d of 100", len(a.got())) })
	var got1, got2 []string
	for _, ev := range a.got() {
		if strings.HasPrefix(ev, `{"c":1`) {
			got1 = append(got1, ev)
		} else {
			got2 = append(got2, ev)
		}
	}
	if !slices.Equal(got1, want1) || !slices.Equal(got2, want2) {
		t.Errorf("a got chat 1 %v and chat 2 %v, want each in the order published", got1, got2)
	}
	testenv.EventuallyDescribe(t, 5*time.Second, func() bool { return slices.Equal(b.got(), want2) }, func() string { return fmt.Sprintf("b got %v, want chat 2's in order", b.got()) })
}

// TestDuplicateGoesToSenderOnly: a message published again because its
// sender retried reaches only the sender's connections.
func TestDuplicateGoesToSenderOnly(t *testing.T) {
	t.Parallel()
	h, rdb, prefix := startHub(t)
	sender, senderTab, other := &sink{user: 1}, &sink{user: 1}, &sink{user: 2}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range []*sink{sender, senderTab, other} {
		if err := h.Join(ctx, s, []int64{7}); err != nil {
			t.Fatal(err)
		}
	}
	publishEnvelope(t, rdb, prefix, fanout.Envelope{ChatID: 7, Seq: 1, SenderID: 1, Duplicate: true, Event: json.RawMessage(`{"dup":1}`)})
	publishEnvelope(t, rdb, prefix, fanout.Envelope{ChatID: 7, Seq: 2, SenderID: 2, Event: json.RawMessage(`{"new":2}`)})
	testenv.Eventually(t, 5*time.Second, func() bool {
		return len(sender.got()) == 2 && len(senderTab.got()) == 2 && len(other.got()) == 1
	}, "deliveries")
	if got := other.got(); got[0] != `{"new":2}` {
		t.Errorf("other user got %v, want only the new message", got)
	}
}

// TestEphemeralSkipsSenderAndHistory: an ephemeral event (typing) published
// by a gateway reaches the other users' connections in the chat through the
// ephemeral path, never the sender's and never as a message.
func TestEphemeralSkipsSenderAndHistory(t *testing.T) {
	t.Parallel()
	h, rdb, prefix := startHub(t)
	sender, senderTab, other, outsider := &sink{user: 1}, &sink{user: 1}, &sink{user: 2}, &sink{user: 3}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range []*sink{sender, senderTab, other} {
		if err := h.Join(ctx, s, []int64{7}); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Join(ctx, outsider, []int64{8}); err != nil {
		t.Fatal(err)
	}
	if err := h.PublishEphemeral(ctx, 7, 1, json.RawMessage(`{"typing":1}`)); err != nil {
		t.Fatal(err)
	}
	// A message published after it arrives after it: then the typing
	// event has been dispatched too.
	publishEnvelope(t, rdb, prefix, fanout.Envelope{ChatID: 7, Seq: 1, SenderID: 2, Event: json.RawMessage(`{"m":1}`)})
	testenv.Eventually(t, 5*time.Second, func() bool { return len(sender.got()) == 1 && len(other.got()) == 1 }, "message")
	if got := other.gotEphemeral(); len(got) != 1 || got[0] != `{"typing":1}` {
		t.Errorf("other member got ephemeral %v, want the typing event", got)
	}
	for name, s := range map[string]*sink{"sender": sender, "sender's other tab": senderTab, "outsider": outsider} {
		if got := s.gotEphemeral(); len(got) != 0 {
			t.Errorf("%s got ephemeral %v, want none", name, got)
		}
	}
	if got := other.got(); got[0] != `{"m":1}` {
		t.Errorf("messages of other = %v, want only the message", got)
	}
}

// TestJoinLeaveChurn: connections joining and leaving one chat
// concurrently never leave the chat unsubscribed while a member is
// connected.
func TestJoinLeaveChurn(t *testing.T) {
	t.Parallel()
	h, rdb, prefix := startHub(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for round := range 200 {
		a, b := &sink{user: 1}, &sink{user: 2}
		if err := h.Join(ctx, a, []int64{3}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() { h.Leave(a, []int64{3}) })
		wg.Go(func() {
			if err := h.Join(ctx, b, []int64{3}); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		// b is a member: an event published now must reach it.
		publishEnvelope(t, rdb, prefix, fanout.Envelope{ChatID: 3, Seq: int64(round), Event: json.RawMessage(`{}`)})
		testenv.Eventually(t, 5*time.Second, func() bool { return len(b.got()) == 1 }, "round %d: event reaches the member", round)
		h.Leave(b, []int64{3})
	}
}

// TestFanoutLatency: each new message's time from acceptance to hand-off
// is observed once; duplicates, ephemeral events and events without an
// acceptance time are not.
func TestFanoutLatency(t *testing.T) {
	t.Parallel()
	// No Redis is needed: the test calls dispatch directly.
	hctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	reg := prometheus.NewRegistry()
	h := New(hctx, redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), "lat",
		telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), reg)
	s := &sink{user: 2}
	h.chats[7] = map[Sink]struct{}{s: {}}
	accepted := time.Now().Add(-2 * time.Second).UnixMicro()
	for _, env := range []fanout.Envelope{
		{ChatID: 7, Seq: 1, SenderID: 1, AcceptedAt: accepted, Event: json.RawMessage(`{"n":1}`)},
		{ChatID: 7, Seq: 1, SenderID: 2, AcceptedAt: accepted, Duplicate: true, Event: json.RawMessage(`{"n":1}`)},
		{ChatID: 7, SenderID: 1, Ephemeral: true, Event: json.RawMessage(`{"typing":1}`)},
		{ChatID: 7, Seq: 2, SenderID: 1, Event: json.RawMessage(`{"n":2}`)},
	} {
		b, err := json.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		h.dispatch(context.Background(), &redis.Message{Channel: fanout.Channel("lat", 7), Payload: string(b)}, nil)
	}
	if got := s.got(); len(got) != 3 {
		t.Fatalf("sink got %v, want the two messages and the duplicate", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var count uint64
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == "gateway_fanout_latency_seconds" {
			count, sum = mf.GetMetric()[0].GetHistogram().GetSampleCount(), mf.GetMetric()[0].GetHistogram().GetSampleSum()
		}
	}
	if count != 1 {
		t.Errorf("latency observed %d times, want once (the new message with its acceptance time)", count)
	}
	if sum < 2 {
		t.Errorf("latency sum %v s, want at least the 2 s since acceptance", sum)
	}
}

// TestFanoutLatencyClampedAndLong: a message accepted in the future (the
// chat service's clock ahead) is observed as 0 and counted as clamped; one
// accepted 40 s ago falls in a bucket below +Inf.
func TestFanoutLatencyClampedAndLong(t *testing.T) {
	t.Parallel()
	hctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	reg := prometheus.NewRegistry()
	h := New(hctx, redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), "skew",
		telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), reg)
	s := &sink{user: 2}
	h.chats[7] = map[Sink]struct{}{s: {}}
	for i, at := range []time.Time{time.Now().Add(time.Minute), time.Now().Add(-40 * time.Second)} {
		b, err := json.Marshal(fanout.Envelope{ChatID: 7, Seq: int64(i + 1), SenderID: 1, AcceptedAt: at.UnixMicro(), Event: json.RawMessage(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		h.dispatch(context.Background(), &redis.Message{Channel: fanout.Channel("skew", 7), Payload: string(b)}, nil)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var clamped float64
	var hist *dto.Histogram
	for _, mf := range mfs {
		switch mf.GetName() {
		case "gateway_fanout_latency_clamped_total":
			clamped = mf.GetMetric()[0].GetCounter().GetValue()
		case "gateway_fanout_latency_seconds":
			hist = mf.GetMetric()[0].GetHistogram()
		}
	}
	if clamped != 1 {
		t.Errorf("clamped %v, want 1 (the message accepted in the future)", clamped)
	}
	if hist == nil {
		t.Fatal("no gateway_fanout_latency_seconds")
	}
	if hist.GetSampleCount() != 2 {
		t.Fatalf("latency observed %d times, want 2", hist.GetSampleCount())
	}
	if sum := hist.GetSampleSum(); sum < 40 || sum > 60 {
		t.Errorf("latency sum %v s, want the 40 s message's time and 0 for the clamped one", sum)
	}
	// The 40 s message lies below the largest finite bucket: quantiles
	// of long delays are not cut at the top bucket.
	buckets := hist.GetBucket()
	top := buckets[len(buckets)-1]
	if top.GetUpperBound() < 60 || top.GetCumulativeCount() != 2 {
		t.Errorf("top bucket le=%v holds %d, want le >= 60 s holding both", top.GetUpperBound(), top.GetCumulativeCount())
	}
	if first := buckets[0]; first.GetCumulativeCount() != 1 {
		t.Errorf("first bucket le=%v holds %d, want the clamped 0", first.GetUpperBound(), first.GetCumulativeCount())
	}
}

// flushSink is a sink that counts its flushes.
type flushSink struct {
	sink
	flushes atomic.Int64
}

func (s *flushSink) Flush() { s.flushes.Add(1) }

// TestLargeFanoutIsFlushedOnce: every member of a chat larger than one
// flush chunk is flushed once per event, the ones past the chunk on
// goroutines of their own.
func TestLargeFanoutIsFlushedOnce(t *testing.T) {
	t.Parallel()
	h, rdb, prefix := startHub(t)
	sinks := make([]*flushSink, 2*flushChunk+10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range sinks {
		sinks[i] = &flushSink{}
		if err := h.Join(ctx, sinks[i], []int64{9}); err != nil {
			t.Fatal(err)
		}
	}
	publishEnvelope(t, rdb, prefix, fanout.Envelope{ChatID: 9, Seq: 1, Event: json.RawMessage(`{"n":1}`)})
	flushed := func() (n int) {
		for _, s := range sinks {
			if len(s.got()) == 1 && s.flushes.Load() == 1 {
				n++
			}
		}
		return n
	}
	testenv.EventuallyDescribe(t, 5*time.Second, func() bool { return flushed() == len(sinks) }, func() string {
		return fmt.Sprintf("%d of %d sinks got the event and one flush", flushed(), len(sinks))
	})
}

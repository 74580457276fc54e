package natsbus

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
)

// observations returns the sample count of each series of the histogram
// name, keyed by "subject outcome".
func observations(t *testing.T, reg *prometheus.Registry, name string) map[string]uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			out[labels["subject"]+" "+labels["outcome"]] = m.GetHistogram().GetSampleCount()
		}
	}
	return out
}

// TestRequestMetrics: both sides record each request under its subject
// without the prefix and its outcome; a subject outside the prefix is
// "other".
func TestRequestMetrics(t *testing.T) {
	t.Parallel()
	nc := testenv.NATSConn(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "pre")
	if err != nil {
		t.Fatal(err)
	}
	tp := noop.NewTracerProvider()
	srv := NewServer(nc, tp, telemetry.NewLogger(io.Discard, 0), time.Second, WithMetrics(m))
	echo := func(_ context.Context, req echoReq) (echoResp, error) {
		switch req.Say {
		case "coded":
			return echoResp{}, busapi.Errorf(protocol.CodeNotAMember, "nope")
		case "boom":
			return echoResp{}, errors.New("database exploded")
		}
		return echoResp{Said: req.Say}, nil
	}
	for _, subj := range []string{"pre.chat.echo", "elsewhere.echo"} {
		if _, err := Handle(context.Background(), srv, subj, "q", echo); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	client := NewClient(nc, tp, WithMetrics(m))
	ctx := context.Background()
	for _, say := range []string{"hi", "hi", "coded", "boom"} {
		_ = client.Request(ctx, "pre.chat.echo", echoReq{Say: say}, nil)
	}
	if _, err := client.RequestJSON(ctx, "pre.chat.echo", echoReq{Say: "hi"}); err != nil {
		t.Fatal(err)
	}
	if err := client.Request(ctx, "pre.nobody.home", echoReq{}, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("request without responders: %v, want ErrUnavailable", err)
	}
	if err := client.Request(ctx, "elsewhere.echo", echoReq{Say: "hi"}, nil); err != nil {
		t.Fatal(err)
	}

	wantClient := map[string]uint64{
		"chat.echo ok": 3, "chat.echo error": 2, "nobody.home unavailable": 1, "other ok": 1,
	}
	if diff := cmp.Diff(wantClient, observations(t, reg, "natsbus_request_duration_seconds")); diff != "" {
		t.Errorf("client histogram counts (-want +got):\n%s", diff)
	}
	// The server records after it replied: poll.
	wantServer := map[string]uint64{
		"chat.echo ok": 3, "chat.echo error": 1, "chat.echo internal": 1, "other ok": 1,
	}
	testenv.EventuallyDescribe(t, 5*time.Second, func() bool {
		return cmp.Equal(wantServer, observations(t, reg, "natsbus_handle_duration_seconds"))
	}, func() string {
		return "server histogram counts (-want +got):\n" + cmp.Diff(wantServer, observations(t, reg, "natsbus_handle_duration_seconds"))
	})
}

func TestNilMetricsRecordNothing(t *testing.T) {
	t.Parallel()
	var m *Metrics
	// Must not panic.
	m.observeRequest("x", time.Now(), nil)
	m.observeHandled("x", time.Second, OutcomeOK)
	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg, "a"); err == nil {
		t.Error("registering the metrics twice in one registry: no error")
	}
}

// fakeClock is a Server's clock that the test moves; each reading is
// signalled on read.
type fakeClock struct {
	mu   sync.Mutex
	now  time.Time
	read chan struct{}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read <- struct{}{}
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// histogram returns the sample count and sum of the series of name with
// the given subject and outcome.
func histogram(t *testing.T, reg *prometheus.Registry, name, subject, outcome string) (uint64, float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["subject"] == subject && labels["outcome"] == outcome {
				return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
			}
		}
	}
	return 0, 0
}

// TestHandleDurationIncludesQueueing: a request that waits for a free
// handler slot is measured from its receipt, not from when a slot freed.
// With one slot, the first request holds it until the test's clock has
// moved 10 s; the second, received before that, must be measured 10 s too.
func TestHandleDurationIncludesQueueing(t *testing.T) {
	t.Parallel()
	nc := testenv.NATSConn(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "pre")
	if err != nil {
		t.Fatal(err)
	}
	tp := noop.NewTracerProvider()
	srv := NewServer(nc, tp, telemetry.NewLogger(io.Discard, 0), 30*time.Second, WithMetrics(m))
	clock := &fakeClock{now: time.Unix(1000, 0), read: make(chan struct{}, 16)}
	srv.now = clock.Now
	srv.slots = make(chan struct{}, 1)

	started := make(chan string, 2)
	gate := make(chan struct{})
	if _, err := Handle(context.Background(), srv, "pre.chat.wait", "q", func(_ context.Context, req echoReq) (echoResp, error) {
		started <- req.Say
		if req.Say == "first" {
			<-gate
		}
		return echoResp{Said: req.Say}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	client := NewClient(nc, tp)
	errs := make(chan error, 2)
	send := func(say string) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			errs <- client.Request(ctx, "pre.chat.wait", echoReq{Say: say}, nil)
		}()
	}
	send("first")
	<-clock.read // the first request's receipt
	if got := <-started; got != "first" {
		t.Fatalf("handler started %q, want first", got)
	}
	send("second")
	select {
	case <-clock.read: // the second's receipt; it now waits for the slot
	case <-time.After(10 * time.Second):
		t.Fatal("the second request's receipt was not timed while the slot was taken")
	}
	select {
	case got := <-started:
		t.Fatalf("handler started %q while the only slot was taken", got)
	default:
	}
	clock.Advance(10 * time.Second)
	close(gate)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	testenv.EventuallyDescribe(t, 5*time.Second, func() bool {
		n, _ := histogram(t, reg, "natsbus_handle_duration_seconds", "chat.wait", OutcomeOK)
		return n == 2
	}, func() string { return "two requests not recorded" })
	// Both were received at the clock's start and answered after it moved
	// 10 s: 20 s in all. Measured from the slot, the second would be 0 s.
	if _, sum := histogram(t, reg, "natsbus_handle_duration_seconds", "chat.wait", OutcomeOK); sum != 20 {
		t.Errorf("handle durations sum to %v s, want 20 (the second request's wait for a slot included)", sum)
	}
}

// TestRequestOutcomes: the requester's canceled context is "canceled",
// not "unavailable"; a reply that does not decode is "error".
func TestRequestOutcomes(t *testing.T) {
	t.Parallel()
	nc := testenv.NATSConn(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "pre")
	if err != nil {
		t.Fatal(err)
	}
	received := make(chan *nats.Msg, 1)
	if _, err := nc.Subscribe("pre.chat.hold", func(msg *nats.Msg) { received <- msg }); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe("pre.chat.garbage", func(msg *nats.Msg) { _ = msg.Respond([]byte("not json")) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	client := NewClient(nc, noop.NewTracerProvider(), WithMetrics(m))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- client.Request(ctx, "pre.chat.hold", echoReq{}, nil) }()
	<-received // the request is out; give up before an answer
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled request: %v, want context.Canceled", err)
	}
	if err := client.Request(context.Background(), "pre.chat.garbage", echoReq{}, nil); err == nil {
		t.Fatal("reply that is not JSON: no error")
	}
	if _, err := client.RequestJSON(context.Background(), "pre.chat.garbage", echoReq{}); err == nil {
		t.Fatal("reply that is not JSON (RequestJSON): no error")
	}
	want := map[string]uint64{"chat.hold canceled": 1, "chat.garbage error": 2}
	if diff := cmp.Diff(want, observations(t, reg, "natsbus_request_duration_seconds")); diff != "" {
		t.Errorf("client histogram counts (-want +got):\n%s", diff)
	}
}

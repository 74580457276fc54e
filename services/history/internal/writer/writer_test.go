package writer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/fanout"
	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/history/internal/fanoutpub"
	"github.com/communications/communications/services/history/internal/history"
	"github.com/communications/communications/services/history/internal/msgstore"
	"github.com/communications/communications/services/history/internal/streamtest"
	"github.com/communications/communications/services/history/internal/writer"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

const waitFor = 20 * time.Second

// env is one test's infrastructure: NATS with the message stream's names,
// a migrated database and a Redis prefix.
type env struct {
	natsURL     string
	subj        subjects.Subjects
	js          jetstream.JetStream // the test's own connection, for publishing
	pool        *pgxpool.Pool
	store       *msgstore.Store
	rdb         *redis.Client
	redisPrefix string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	ns := testenv.NATS(t)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgdb.Open(ctx, testenv.Postgres(t), 8, noop.NewTracerProvider())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := pgdb.Migrate(ctx, pool, msgstore.Migrations(), msgstore.MigrationTable, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	redisURL, prefix := testenv.Redis(t)
	ropts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(ropts)
	t.Cleanup(func() { _ = rdb.Close() })
	return &env{
		natsURL: ns.ClientURL(), subj: subj, js: streamtest.Connect(t, ns.ClientURL()),
		pool: pool, store: msgstore.New(pool), rdb: rdb, redisPrefix: strings.TrimSuffix(prefix, ":"),
	}
}

// writerOpts vary a test writer.
type writerOpts struct {
	store     writer.Store // default: the env's store
	batchSize int
	tp        trace.TracerProvider
	log       io.Writer
	pinnedTTL time.Duration
	ackWait   time.Duration
	// ctx, when set, stops the writer when it ends (else: at test end).
	ctx context.Context
	// stopped, when set, is closed once the writer's Run has returned.
	stopped chan struct{}
	// lagInterval, when set, runs WatchLag at that interval beside Run.
	lagInterval time.Duration
}

// startWriter runs a writer on its own NATS connection until the test ends
// and returns its metrics registry.
func (e *env) startWriter(t *testing.T, o writerOpts) *prometheus.Registry {
	t.Helper()
	if o.store == nil {
		o.store = e.store
	}
	if o.tp == nil {
		o.tp = noop.NewTracerProvider()
	}
	if o.log == nil {
		o.log = t.Output()
	}
	reg := prometheus.NewRegistry()
	w, err := writer.New(streamtest.Connect(t, e.natsURL), o.store, fanoutpub.New(e.rdb, e.redisPrefix), writer.Config{
		Stream: e.subj.MessagesStream(), Consumer: e.subj.HistoryWriterConsumer(),
		BatchSize: o.batchSize, RetryMin: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		PinnedTTL: o.pinnedTTL, AckWait: o.ackWait, LagInterval: o.lagInterval,
	}, slog.New(slog.NewJSONHandler(o.log, &slog.HandlerOptions{Level: slog.LevelWarn})), o.tp, reg)
	if err != nil {
		t.Fatal(err)
	}
	parent := o.ctx
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithCancel(parent)
	done := make(chan error, 1)
	lagDone := make(chan error, 1)
	if o.lagInterval > 0 {
		go func() { lagDone <- w.WatchLag(ctx) }()
	} else {
		lagDone <- nil
	}
	go func() {
		err := w.Run(ctx)
		if o.stopped != nil {
			close(o.stopped)
		}
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("writer: %v", err)
			}
		case <-time.After(waitFor):
			t.Error("writer did not stop")
		}
		select {
		case err := <-lagDone:
			if err != nil {
				t.Errorf("lag watcher: %v", err)
			}
		case <-time.After(waitFor):
			t.Error("lag watcher did not stop")
		}
	})
	return reg
}

// event is one fanout publication, decoded.
type event struct {
	msg       protocol.Message
	trace     map[string]string
	duplicate bool
	accepted  int64
}

// subscribe subscribes to the fanout channels of chats and returns their
// messages.
func (e *env) subscribe(t *testing.T, chats ...int64) <-chan *redis.Message {
	t.Helper()
	ctx := context.Background()
	chans := make([]string, len(chats))
	for i, c := range chats {
		chans[i] = fanout.Channel(e.redisPrefix, c)
	}
	sub := e.rdb.Subscribe(ctx, chans...)
	t.Cleanup(func() { _ = sub.Close() })
	for range chans {
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatalf("subscribe: %v", err)
		}
	}
	return sub.Channel(redis.WithChannelSize(10000))
}

// collect receives n events from ch, failing the test at the deadline.
func (e *env) collect(t *testing.T, ch <-chan *redis.Message, n int) []event {
	t.Helper()
	deadline := time.After(waitFor)
	out := make([]event, 0, n)
	for len(out) < n {
		select {
		case rm := <-ch:
			var env fanout.Envelope
			var ev event
			if err := json.Unmarshal([]byte(rm.Payload), &env); err != nil {
				t.Fatalf("decode envelope: %v", err)
			}
			if err := json.Unmarshal(env.Event, &ev.msg); err != nil {
				t.Fatalf("decode event: %v", err)
			}
			if rm.Channel != fanout.Channel(e.redisPrefix, ev.msg.ChatID) {
				t.Errorf("event of chat %d on channel %s", ev.msg.ChatID, rm.Channel)
			}
			if env.ChatID != ev.msg.ChatID || env.Seq != ev.msg.Seq || env.SenderID != ev.msg.SenderID {
				t.Errorf("envelope routes chat %d seq %d sender %d, event is chat %d seq %d sender %d",
					env.ChatID, env.Seq, env.SenderID, ev.msg.ChatID, ev.msg.Seq, ev.msg.SenderID)
			}
			ev.trace = env.Trace
			ev.duplicate = env.Duplicate
			ev.accepted = env.AcceptedAt
			out = append(out, ev)
		case <-deadline:
			t.Fatalf("received %d of %d fanout events", len(out), n)
		}
	}
	return out
}

func (e *env) waitDrained(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, waitFor, func() bool {
		ok, err := streamtest.Drained(context.Background(), e.js, e.subj)
		return err == nil && ok
	}, "consumer has messages pending or unacked")
}

func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if h := m.GetHistogram(); h != nil {
			return float64(h.GetSampleCount())
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}

var sentAt = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func streamMsg(chat, sender int64, client, text string) busapi.StreamMessage {
	return busapi.StreamMessage{ChatID: chat, SenderID: sender, Sender: fmt.Sprintf("user%d", sender), ClientMsgID: client, Text: text, AcceptedAt: sentAt}
}

func TestWriterNumbersChatsInStreamOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	recorder := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	events := e.subscribe(t, 1, 2, 3)

	// 60 messages over three chats, interleaved, each sent under its own
	// trace, all in the stream before the writer starts: one batch.
	type sent struct {
		msg  busapi.StreamMessage
		span trace.SpanContext
	}
	var all []sent
	wantSeq := map[string]int64{}
	next := map[int64]int64{}
	for i := range 60 {
		chat := int64(i%3 + 1)
		if i%7 == 0 {
			chat = 2
		}
		m := streamMsg(chat, int64(i%4), fmt.Sprintf("c%d", i), fmt.Sprintf("text %d", i))
		ctx, span := tp.Tracer("test").Start(context.Background(), "send")
		streamtest.Publish(ctx, t, e.js, e.subj, m, streamtest.MsgID(m))
		span.End()
		next[chat]++
		wantSeq[m.ClientMsgID] = next[chat]
		all = append(all, sent{msg: m, span: span.SpanContext()})
	}
	reg := e.startWriter(t, writerOpts{tp: tp})

	got := e.collect(t, events, len(all))
	byClient := map[string]event{}
	for _, ev := range got {
		byClient[ev.msg.ClientMsgID] = ev
	}
	for _, s := range all {
		ev, ok := byClient[s.msg.ClientMsgID]
		if !ok {
			t.Fatalf("no fanout event for %s", s.msg.ClientMsgID)
		}
		want := protocol.Message{
			Type: protocol.TypeMessage, ChatID: s.msg.ChatID, Seq: wantSeq[s.msg.ClientMsgID], SenderID: s.msg.SenderID,
			Sender: s.msg.Sender, ClientMsgID: s.msg.ClientMsgID, Text: s.msg.Text, SentAt: sentAt,
		}
		if diff := cmp.Diff(want, ev.msg); diff != "" {
			t.Errorf("event (-want +got):\n%s", diff)
		}
		// The fanout event continues the message's trace.
		sc := trace.SpanContextFromContext(telemetry.Propagator().Extract(context.Background(), propagation.MapCarrier(ev.trace)))
		if sc.TraceID() != s.span.TraceID() {
			t.Errorf("event %s has trace %s, want the send's %s", s.msg.ClientMsgID, sc.TraceID(), s.span.TraceID())
		}
	}
	e.waitDrained(t)

	// Stored as published, per chat.
	for chat, n := range next {
		msgs, err := e.store.Page(context.Background(), chat, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(msgs)) != n || msgs[0].Seq != 1 || msgs[len(msgs)-1].Seq != n {
			t.Errorf("chat %d: stored %d messages, want seqs 1..%d", chat, len(msgs), n)
		}
	}
	if got := metric(t, reg, "history_writer_messages_stored_total"); got != 60 {
		t.Errorf("stored counter = %v, want 60", got)
	}

	// Spans: one per message, child of the send's span, and the batch
	// span linked to every message.
	sendSpans := map[trace.SpanID]bool{}
	for _, s := range all {
		sendSpans[s.span.SpanID()] = true
	}
	var msgSpans, linked int
	for _, s := range recorder.Ended() {
		switch s.Name() {
		case "history store message":
			msgSpans++
			if !sendSpans[s.Parent().SpanID()] || s.Parent().TraceID() != s.SpanContext().TraceID() {
				t.Errorf("message span %s is not a child of a send span", s.SpanContext().SpanID())
			}
		case "history write batch":
			linked += len(s.Links())
		}
	}
	if msgSpans != 60 || linked != 60 {
		t.Errorf("%d message spans and %d batch links, want 60 each", msgSpans, linked)
	}
}

func TestWriterStoresDuplicatesOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	events := e.subscribe(t, 5)
	ctx := context.Background()

	// A retry in the same batch: another Nats-Msg-Id, as after the
	// stream's duplicate window, so the stream keeps both.
	first := streamMsg(5, 1, "hello", "hello")
	streamtest.Publish(ctx, t, e.js, e.subj, first, "a")
	streamtest.Publish(ctx, t, e.js, e.subj, first, "b")
	reg := e.startWriter(t, writerOpts{})
	got := e.collect(t, events, 2)
	for _, ev := range got {
		if ev.msg.Seq != 1 || ev.msg.Text != "hello" {
			t.Errorf("event %+v, want seq 1", ev.msg)
		}
	}
	if got[0].duplicate || !got[1].duplicate {
		t.Errorf("duplicate flags %v, %v; want only the retry marked", got[0].duplicate, got[1].duplicate)
	}
	// The gateways time their fanout from a new message's acceptance; a
	// duplicate carries no time.
	if got[0].accepted != sentAt.UnixMicro() || got[1].accepted != 0 {
		t.Errorf("accepted times %d, %d; want %d for the new message, 0 for the retry", got[0].accepted, got[1].accepted, sentAt.UnixMicro())
	}

	// A retry in a later batch, with other text, keeps the original; the
	// next message is numbered as if there had been no retry.
	retry := first
	retry.Text = "changed"
	streamtest.Publish(ctx, t, e.js, e.subj, retry, "c")
	e.waitDrained(t)
	streamtest.Publish(ctx, t, e.js, e.subj, streamMsg(5, 1, "second", "second"), "d")
	got = e.collect(t, events, 2)
	if got[0].msg.Seq != 1 || got[0].msg.Text != "hello" || got[1].msg.Seq != 2 || got[1].msg.ClientMsgID != "second" {
		t.Errorf("events %+v, %+v; want the original with seq 1, then second with seq 2", got[0].msg, got[1].msg)
	}
	if !got[0].duplicate || got[1].duplicate {
		t.Errorf("duplicate flags %v, %v; want the retry marked, the new message not", got[0].duplicate, got[1].duplicate)
	}
	e.waitDrained(t)
	var n int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM messages`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("%d messages stored, want 2", n)
	}
	if got := metric(t, reg, "history_writer_duplicates_total"); got != 2 {
		t.Errorf("duplicates counter = %v, want 2", got)
	}
}

func TestWriterTerminatesMalformedMessages(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	events := e.subscribe(t, 1)
	ctx := context.Background()
	streamtest.PublishRaw(ctx, t, e.js, e.subj.Message(1), []byte("{not json"), "bad-1")
	streamtest.PublishRaw(ctx, t, e.js, e.subj.Message(1), []byte(`{"chat_id":1}`), "bad-2")
	streamtest.Publish(ctx, t, e.js, e.subj, streamMsg(1, 1, "ok", "fine"), "ok")
	reg := e.startWriter(t, writerOpts{})
	if got := e.collect(t, events, 1); got[0].msg.Seq != 1 || got[0].msg.ClientMsgID != "ok" {
		t.Errorf("event %+v, want ok with seq 1", got[0].msg)
	}
	e.waitDrained(t)
	if got := metric(t, reg, "history_writer_malformed_messages_total"); got != 2 {
		t.Errorf("malformed counter = %v, want 2", got)
	}
}

// flakyStore fails its first calls.
type flakyStore struct {
	writer.Store
	failures atomic.Int32
}

func (s *flakyStore) StoreBatch(ctx context.Context, msgs []history.Message) ([]history.Stored, error) {
	if s.failures.Add(-1) >= 0 {
		return nil, errors.New("database is down")
	}
	return s.Store.StoreBatch(ctx, msgs)
}

// downStore fails every batch while down is set.
type downStore struct {
	writer.Store
	down atomic.Bool
}

func (s *downStore) StoreBatch(ctx context.Context, msgs []history.Message) ([]history.Stored, error) {
	if s.down.Load() {
		return nil, errors.New("database is down")
	}
	return s.Store.StoreBatch(ctx, msgs)
}

// gauge returns the value of the gauge name.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestWriterLag: while the database is down the consumer lag gauge shows
// every message not yet stored; once stored it falls to zero.
func TestWriterLag(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	const n = 7
	for i := range n {
		streamtest.Publish(context.Background(), t, e.js, e.subj, streamMsg(9, 1, fmt.Sprint(i), fmt.Sprint(i)), fmt.Sprint(i))
	}
	store := &downStore{Store: e.store}
	store.down.Store(true)
	reg := e.startWriter(t, writerOpts{store: store, lagInterval: 20 * time.Millisecond, log: io.Discard})
	const lag = "history_writer_consumer_lag_messages"
	testenv.EventuallyDescribe(t, waitFor, func() bool { return gauge(t, reg, lag) == n },
		func() string { return fmt.Sprintf("lag %v while the database is down, want %d", gauge(t, reg, lag), n) })
	store.down.Store(false)
	e.waitDrained(t)
	testenv.EventuallyDescribe(t, waitFor, func() bool { return gauge(t, reg, lag) == 0 },
		func() string { return fmt.Sprintf("lag %v after every message was stored, want 0", gauge(t, reg, lag)) })
	if got := metric(t, reg, "history_writer_messages_stored_total"); got != n {
		t.Errorf("stored %v, want %d", got, n)
	}
}

func TestWriterRedeliversFailedBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	events := e.subscribe(t, 9)
	for i := range 5 {
		streamtest.Publish(context.Background(), t, e.js, e.subj, streamMsg(9, 1, fmt.Sprint(i), fmt.Sprint(i)), fmt.Sprint(i))
	}
	store := &flakyStore{Store: e.store}
	store.failures.Store(2)
	reg := e.startWriter(t, writerOpts{store: store})
	for i, ev := range e.collect(t, events, 5) {
		if ev.msg.Seq != int64(i+1) || ev.msg.ClientMsgID != fmt.Sprint(i) {
			t.Errorf("event %d: %+v, want seq %d", i, ev.msg, i+1)
		}
	}
	e.waitDrained(t)
	if got := metric(t, reg, "history_writer_failed_batches_total"); got != 2 {
		t.Errorf("failed batches = %v, want 2", got)
	}
}

// syncBuffer is a log destination safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestWriterWaitsForTheStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	events := e.subscribe(t, 4)
	var log syncBuffer
	e.startWriter(t, writerOpts{log: &log})
	testenv.Eventually(t, waitFor, func() bool {
		return strings.Contains(log.String(), "message stream does not exist yet")
	}, "the writer did not report the missing stream")

	streamtest.CreateStream(t, e.js, e.subj)
	streamtest.Publish(context.Background(), t, e.js, e.subj, streamMsg(4, 1, "x", "late"), "x")
	if got := e.collect(t, events, 1); got[0].msg.Seq != 1 {
		t.Errorf("event %+v, want seq 1", got[0].msg)
	}
	if n := strings.Count(log.String(), "does not exist yet"); n != 1 {
		t.Errorf("missing stream logged %d times, want once", n)
	}
}

func TestTwoWritersShareTheConsumer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	const publishers, perPublisher, chats = 4, 300, 3
	ctxA, stopA := context.WithCancel(context.Background())
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopA()
	defer stopB()
	stoppedA, stoppedB := make(chan struct{}), make(chan struct{})
	regA := e.startWriter(t, writerOpts{batchSize: 25, pinnedTTL: time.Second, ctx: ctxA, stopped: stoppedA})
	regB := e.startWriter(t, writerOpts{batchSize: 25, pinnedTTL: time.Second, ctx: ctxB, stopped: stoppedB})

	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range perPublisher {
				m := streamMsg(int64(i%chats+1), int64(p), fmt.Sprintf("p%d-%d", p, i), "x")
				streamtest.Publish(context.Background(), t, e.js, e.subj, m, streamtest.MsgID(m))
				if i%10 == 0 {
					// A retry past the stream's duplicate window.
					streamtest.Publish(context.Background(), t, e.js, e.subj, m, streamtest.MsgID(m)+":retry")
				}
			}
		})
	}
	wg.Wait()
	e.waitDrained(t)

	rows, err := e.pool.Query(context.Background(), `SELECT chat_id, count(*), min(seq), max(seq) FROM messages GROUP BY chat_id ORDER BY chat_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	total := int64(0)
	for rows.Next() {
		var chat, n, lo, hi int64
		if err := rows.Scan(&chat, &n, &lo, &hi); err != nil {
			t.Fatal(err)
		}
		if lo != 1 || hi != n {
			t.Errorf("chat %d: %d messages with seqs %d..%d, want contiguous from 1", chat, n, lo, hi)
		}
		total += n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if total != publishers*perPublisher {
		t.Errorf("stored %d messages, want %d", total, publishers*perPublisher)
	}
	// One sender's messages keep their publishing order in every chat,
	// whichever replica stored them.
	ordered, err := e.pool.Query(context.Background(), `SELECT chat_id, sender_id, client_msg_id FROM messages ORDER BY chat_id, seq`)
	if err != nil {
		t.Fatal(err)
	}
	last := map[[2]int64]int{}
	inversions := 0
	for ordered.Next() {
		var chat, sender int64
		var id string
		if err := ordered.Scan(&chat, &sender, &id); err != nil {
			t.Fatal(err)
		}
		var p, i int
		if _, err := fmt.Sscanf(id, "p%d-%d", &p, &i); err != nil {
			t.Fatalf("client_msg_id %q: %v", id, err)
		}
		key := [2]int64{chat, sender}
		if prev, ok := last[key]; ok && i < prev {
			inversions++
		}
		last[key] = i
	}
	if err := ordered.Err(); err != nil {
		t.Fatal(err)
	}
	if inversions > 0 {
		t.Errorf("%d messages stored before an earlier message of the same sender in the same chat", inversions)
	}
	// One replica is pinned and stores everything; the other stands by.
	a, b := metric(t, regA, "history_writer_messages_stored_total"), metric(t, regB, "history_writer_messages_stored_total")
	if a+b != publishers*perPublisher || (a != 0 && b != 0) {
		t.Errorf("writers stored %v and %v messages, want one of them all %d", a, b, publishers*perPublisher)
	}

	// When the active replica stops, the standby takes over.
	active, activeStopped, standby := stopA, stoppedA, regB
	if b > 0 {
		active, activeStopped, standby = stopB, stoppedB, regA
	}
	active()
	select {
	case <-activeStopped:
	case <-time.After(waitFor):
		t.Fatal("the active writer did not stop")
	}
	before := metric(t, standby, "history_writer_messages_stored_total")
	for i := range 20 {
		m := streamMsg(1, 99, fmt.Sprintf("after-%d", i), "x")
		streamtest.Publish(context.Background(), t, e.js, e.subj, m, streamtest.MsgID(m))
	}
	testenv.Eventually(t, waitFor, func() bool {
		return metric(t, standby, "history_writer_messages_stored_total") == before+20
	}, "the standby writer stores the messages published after the active one stopped")
}

// changeMsg is an edit (text set) or a deletion (no text) of target.
func changeMsg(chat, sender int64, client string, target int64, text string) busapi.StreamMessage {
	m := streamMsg(chat, sender, client, text)
	m.Kind, m.TargetSeq = protocol.KindEdit, target
	if text == "" {
		m.Kind = protocol.KindDelete
	}
	return m
}

// TestWriterStoresChanges: edits and deletions take sequence numbers and go
// out for fanout with their kind and target; one whose target fails the
// writer's check (a race the chat service cannot see) is acked, counted and
// neither stored nor published; a retried edit keeps its original number.
func TestWriterStoresChanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	events := e.subscribe(t, 4)
	ctx := context.Background()
	publish := func(ms ...busapi.StreamMessage) {
		for _, m := range ms {
			streamtest.Publish(ctx, t, e.js, e.subj, m, streamtest.MsgID(m))
		}
	}
	publish(
		streamMsg(4, 1, "m1", "first"),
		streamMsg(4, 2, "m2", "second"),
		changeMsg(4, 1, "e1", 1, "first, edited"),
		changeMsg(4, 2, "x1", 1, "not mine"), // rejected: another sender
		changeMsg(4, 2, "d1", 2, ""),
		changeMsg(4, 2, "e2", 2, "after the delete"), // rejected: deleted
	)
	// Malformed changes never block the stream.
	streamtest.PublishRaw(ctx, t, e.js, e.subj.Message(4), []byte(`{"chat_id":4,"sender_id":1,"client_msg_id":"bad","kind":"edit"}`), "bad-1")
	streamtest.PublishRaw(ctx, t, e.js, e.subj.Message(4), []byte(`{"chat_id":4,"sender_id":1,"client_msg_id":"bad2","kind":"shout","target_seq":1}`), "bad-2")
	reg := e.startWriter(t, writerOpts{})

	describe := func(evs []event) []string {
		out := make([]string, len(evs))
		for i, ev := range evs {
			out[i] = fmt.Sprintf("%d %q of %d %q dup=%v", ev.msg.Seq, ev.msg.Kind, ev.msg.TargetSeq, ev.msg.Text, ev.duplicate)
		}
		return out
	}
	want := []string{
		`1 "" of 0 "first" dup=false`,
		`2 "" of 0 "second" dup=false`,
		`3 "edit" of 1 "first, edited" dup=false`,
		`4 "delete" of 2 "" dup=false`,
	}
	if diff := cmp.Diff(want, describe(e.collect(t, events, 4))); diff != "" {
		t.Errorf("fanout events (-want +got):\n%s", diff)
	}
	e.waitDrained(t)
	if got := metric(t, reg, "history_writer_changes_rejected_total"); got != 2 {
		t.Errorf("rejected counter = %v, want 2", got)
	}
	if got := metric(t, reg, "history_writer_malformed_messages_total"); got != 2 {
		t.Errorf("malformed counter = %v, want 2", got)
	}

	// A retried edit past the stream's window (another Nats-Msg-Id) keeps
	// its number and goes back to its sender; the next entry takes 5.
	retry := changeMsg(4, 1, "e1", 1, "first, edited")
	streamtest.Publish(ctx, t, e.js, e.subj, retry, "retry-e1")
	publish(changeMsg(4, 1, "e3", 1, "first, edited again"))
	want = []string{
		`3 "edit" of 1 "first, edited" dup=true`,
		`5 "edit" of 1 "first, edited again" dup=false`,
	}
	if diff := cmp.Diff(want, describe(e.collect(t, events, 2))); diff != "" {
		t.Errorf("fanout events after the retry (-want +got):\n%s", diff)
	}
	e.waitDrained(t)
	msgs, err := e.store.Page(ctx, 4, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 5 || msgs[0].Text != "first, edited again" || msgs[0].EditedAt.IsZero() || !msgs[1].Deleted || msgs[1].Text != "" {
		t.Errorf("history = %+v; want 5 entries, message 1 edited again, message 2 deleted", msgs)
	}
}

// stuckStore never finishes a batch until released: a writer using it
// holds its batch unacknowledged, as a killed writer does.
type stuckStore struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (s *stuckStore) StoreBatch(ctx context.Context, msgs []history.Message) ([]history.Stored, error) {
	s.once.Do(func() { close(s.entered) })
	<-s.release
	return nil, errors.New("released")
}

// A writer that dies holding a batch (here: stuck) leaves it unacknowledged
// until AckWait; the writer taking over must not number the newer messages
// first, or one sender's messages would be stored out of their order.
func TestWriterKeepsStreamOrderAfterAWriterDies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	stuck := &stuckStore{entered: make(chan struct{}), release: make(chan struct{})}
	e.startWriter(t, writerOpts{store: stuck, pinnedTTL: 500 * time.Millisecond, ackWait: 2 * time.Second})
	t.Cleanup(func() { close(stuck.release) }) // runs before the writer's cleanup
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			m := streamMsg(1, 7, fmt.Sprintf("m-%02d", i), "x")
			streamtest.Publish(context.Background(), t, e.js, e.subj, m, streamtest.MsgID(m))
		}
	}
	publish(0, 5)
	select {
	case <-stuck.entered:
	case <-time.After(waitFor):
		t.Fatal("the first writer did not take the first batch")
	}
	reg := e.startWriter(t, writerOpts{pinnedTTL: 500 * time.Millisecond, ackWait: 2 * time.Second})
	publish(5, 10)
	testenv.Eventually(t, waitFor, func() bool {
		return metric(t, reg, "history_writer_messages_stored_total") == 10
	}, "the second writer stores all ten messages")
	rows, err := e.pool.Query(context.Background(), `SELECT client_msg_id FROM messages WHERE chat_id = 1 ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if want := fmt.Sprintf("m-%02d", i); id != want {
			t.Fatalf("stored in the order %v, want m-00 ... m-09", ids)
		}
	}
	if metric(t, reg, "history_writer_held_back_total") == 0 {
		t.Error("the second writer never held newer messages back")
	}
}

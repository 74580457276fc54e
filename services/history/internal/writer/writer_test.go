package writer_test

import (
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
	// lock names the lock's bucket (default: the writers' bucket), id the
	// writer in it.
	lock, id string
	// leaderTTL and purgeInterval default to the writer's defaults.
	leaderTTL     time.Duration
	purgeInterval time.Duration
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
	if o.lock == "" {
		o.lock = e.subj.HistoryWriterLock()
	}
	reg := prometheus.NewRegistry()
	w, err := writer.New(streamtest.Connect(t, e.natsURL), o.store, fanoutpub.New(e.rdb, e.redisPrefix), writer.Config{
		Stream: e.subj.MessagesStream(), Lock: o.lock, ID: o.id,
		BatchSize: o.batchSize, RetryMin: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		LeaderTTL: o.leaderTTL, PurgeInterval: o.purgeInterval, LagInterval: o.lagInterval,
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
		ok, err := streamtest.Drained(context.Background(), e.js, e.subj, e.store)
		return err == nil && ok
	}, "the stored position is not the stream's last sequence")
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

// TestWriterSkipsMalformedMessages: a message that can never be stored is
// counted and skipped; the messages after it are stored.
func TestWriterSkipsMalformedMessages(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	events := e.subscribe(t, 1)
	ctx := context.Background()
	streamtest.PublishRaw(ctx, t, e.js, e.subj.Message(1), []byte("{not json"), "bad-1")
	streamtest.PublishRaw(ctx, t, e.js, e.subj.Message(1), []byte(`{"chat_id":1}`), "bad-2")
	// PostgreSQL's text cannot hold NUL.
	streamtest.PublishRaw(ctx, t, e.js, e.subj.Message(1), []byte(`{"chat_id":1,"sender_id":1,"sender":"u","client_msg_id":"a\u0000b","text":"x"}`), "bad-nul")
	streamtest.Publish(ctx, t, e.js, e.subj, streamMsg(1, 1, "ok", "fine"), "ok")
	reg := e.startWriter(t, writerOpts{})
	if got := e.collect(t, events, 1); got[0].msg.Seq != 1 || got[0].msg.ClientMsgID != "ok" {
		t.Errorf("event %+v, want ok with seq 1", got[0].msg)
	}
	e.waitDrained(t)
	// A batch of nothing but a malformed message stores nothing and still
	// moves the position past it.
	streamtest.PublishRaw(ctx, t, e.js, e.subj.Message(1), []byte(`{"chat_id":1,"client_msg_id":"x","kind":"shout"}`), "bad-3")
	e.waitDrained(t)
	if got := metric(t, reg, "history_writer_malformed_messages_total"); got != 4 {
		t.Errorf("malformed counter = %v, want 4", got)
	}
	if got := metric(t, reg, "history_writer_messages_stored_total"); got != 1 {
		t.Errorf("stored counter = %v, want 1", got)
	}
}

// A text holding NUL, which PostgreSQL's text refuses, is stored with
// U+FFFD in its place instead of failing its batch for ever (the chat
// service refuses such texts; the stream may hold one accepted earlier).
func TestWriterStoresTextWithNUL(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	events := e.subscribe(t, 1)
	ctx := context.Background()
	streamtest.Publish(ctx, t, e.js, e.subj, streamMsg(1, 1, "nul", "a\x00b\x00"), "nul")
	streamtest.Publish(ctx, t, e.js, e.subj, streamMsg(1, 1, "next", "after it"), "next")
	e.startWriter(t, writerOpts{})
	got := e.collect(t, events, 2)
	if got[0].msg.Text != "a\uFFFDb\uFFFD" || got[0].msg.Seq != 1 || got[1].msg.ClientMsgID != "next" || got[1].msg.Seq != 2 {
		t.Fatalf("events %+v, %+v: want the text with U+FFFD at seq 1, then next at 2", got[0].msg, got[1].msg)
	}
	e.waitDrained(t)
	page, err := e.store.Page(ctx, 1, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 2 || page[0].Text != "a\uFFFDb\uFFFD" {
		t.Fatalf("stored %+v, want two messages, the first with U+FFFD", page)
	}
}

// flakyStore fails its first calls.
type flakyStore struct {
	writer.Store
	failures atomic.Int32
}

func (s *flakyStore) StoreBatchAt(ctx context.Context, msgs []history.Message, adv history.Advance) ([]history.Stored, error) {
	if s.failures.Add(-1) >= 0 {
		return nil, errors.New("database is down")
	}
	return s.Store.StoreBatchAt(ctx, msgs, adv)
}

// downStore fails every batch while down is set.
type downStore struct {
	writer.Store
	down atomic.Bool
}

func (s *downStore) StoreBatchAt(ctx context.Context, msgs []history.Message, adv history.Advance) ([]history.Stored, error) {
	if s.down.Load() {
		return nil, errors.New("database is down")
	}
	return s.Store.StoreBatchAt(ctx, msgs, adv)
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
	// Nothing stored, nothing purged: the stream still holds every message.
	if st := e.streamState(t); st.Msgs != n {
		t.Errorf("the stream holds %d messages while the database is down, want %d", st.Msgs, n)
	}
	store.down.Store(false)
	e.waitDrained(t)
	testenv.EventuallyDescribe(t, waitFor, func() bool { return gauge(t, reg, lag) == 0 },
		func() string { return fmt.Sprintf("lag %v after every message was stored, want 0", gauge(t, reg, lag)) })
	if got := metric(t, reg, "history_writer_messages_stored_total"); got != n {
		t.Errorf("stored %v, want %d", got, n)
	}
}

// TestWriterRetriesFailedBatches: a batch whose transaction failed is
// stored again, in order, once the database answers.
func TestWriterRetriesFailedBatches(t *testing.T) {
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

func TestWriterWaitsForTheStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	events := e.subscribe(t, 4)
	var log testenv.LogBuffer
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
// writer's check (a race the chat service cannot see) is counted and
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

// streamState returns the message stream's state.
func (e *env) streamState(t *testing.T) jetstream.StreamState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, e.subj.MessagesStream())
	if err != nil {
		t.Fatalf("look up the stream: %v", err)
	}
	return st.CachedInfo().State
}

// lockKV returns the writers' lock bucket (declared by a writer).
func (e *env) lockKV(t *testing.T) jetstream.KeyValue {
	t.Helper()
	var kv jetstream.KeyValue
	testenv.Eventually(t, waitFor, func() bool {
		var err error
		kv, err = e.js.KeyValue(context.Background(), e.subj.HistoryWriterLock())
		return err == nil
	}, "no writer declared the lock bucket %s", e.subj.HistoryWriterLock())
	return kv
}

// lockHolder returns the value of the writers' lock ("" when nobody holds
// it).
func lockHolder(t *testing.T, kv jetstream.KeyValue) string {
	t.Helper()
	entry, err := kv.Get(context.Background(), subjects.HistoryWriterLockKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return ""
	}
	if err != nil {
		t.Fatalf("read the lock: %v", err)
	}
	return string(entry.Value())
}

// readMetric returns the value of the counter or gauge name, or -1; unlike
// metric and gauge it may be called off the test's goroutine.
func readMetric(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	return -1
}

// sentMsg is a message published to the stream, with the stream sequence
// of its first publication (in the stream created epoch times again) and
// its place among its sender's messages.
type sentMsg struct {
	msg   busapi.StreamMessage
	epoch int
	seq   uint64
	index int
}

// publish publishes m to the stream under msgID and returns its stream
// sequence. It may be called off the test's goroutine.
func (e *env) publish(m busapi.StreamMessage, msgID string) (uint64, error) {
	data, err := json.Marshal(m)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := e.js.Publish(ctx, e.subj.Message(m.ChatID), data, jetstream.WithMsgID(msgID))
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// mustPublish publishes m under its chat service Nats-Msg-Id and returns it
// as sent.
func (e *env) mustPublish(t *testing.T, m busapi.StreamMessage, index int) sentMsg {
	t.Helper()
	seq, err := e.publish(m, streamtest.MsgID(m))
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return sentMsg{msg: m, seq: seq, index: index}
}

// startSenders has senders (ids 1..senders) publish perSender messages
// each, over chats 1..chats, concurrently; every tenth message is sent
// again under another Nats-Msg-Id, as a retry past the stream's duplicate
// window. The function returned waits for them and returns the messages
// sent (first publications) and the number of retries.
func (e *env) startSenders(t *testing.T, senders, perSender, chats int, tag string) func() ([]sentMsg, int) {
	t.Helper()
	var (
		mu      sync.Mutex
		sent    []sentMsg
		retries int
		wg      sync.WaitGroup
	)
	for s := 1; s <= senders; s++ {
		wg.Go(func() {
			for i := range perSender {
				m := streamMsg(int64(i%chats+1), int64(s), fmt.Sprintf("%s%d-%d", tag, s, i), "x")
				seq, err := e.publish(m, streamtest.MsgID(m))
				if err != nil {
					t.Errorf("sender %d: publish: %v", s, err)
					return
				}
				mu.Lock()
				sent = append(sent, sentMsg{msg: m, seq: seq, index: i})
				mu.Unlock()
				if i%10 == 0 {
					if _, err := e.publish(m, streamtest.MsgID(m)+":retry"); err != nil {
						t.Errorf("sender %d: publish a retry: %v", s, err)
						return
					}
					mu.Lock()
					retries++
					mu.Unlock()
				}
			}
		})
	}
	return func() ([]sentMsg, int) {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return sent, retries
	}
}

// checkStored checks that the database holds exactly the messages sent,
// each once, numbered 1, 2, 3... in each chat in stream order (so in each
// sender's order too).
func (e *env) checkStored(t *testing.T, sent []sentMsg) {
	t.Helper()
	byID := make(map[string]sentMsg, len(sent))
	for _, s := range sent {
		byID[s.msg.ClientMsgID] = s
	}
	rows, err := e.pool.Query(context.Background(), `SELECT chat_id, seq, sender_id, client_msg_id FROM messages ORDER BY chat_id, seq`)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		Chat, Seq, Sender int64
		ID                string
	}
	stored, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	seen := map[string]bool{}
	lastSeq := map[int64]int64{}
	lastStream := map[int64]sentMsg{}
	lastIndex := map[[2]int64]int{}
	for _, r := range stored {
		s, ok := byID[r.ID]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("stored %q, never sent", r.ID))
			continue
		case seen[r.ID]:
			problems = append(problems, fmt.Sprintf("%q stored twice", r.ID))
		case s.msg.ChatID != r.Chat || s.msg.SenderID != r.Sender:
			problems = append(problems, fmt.Sprintf("%q stored in chat %d from %d, sent to %d from %d", r.ID, r.Chat, r.Sender, s.msg.ChatID, s.msg.SenderID))
		}
		seen[r.ID] = true
		if r.Seq != lastSeq[r.Chat]+1 {
			problems = append(problems, fmt.Sprintf("chat %d: %q has seq %d after %d", r.Chat, r.ID, r.Seq, lastSeq[r.Chat]))
		}
		lastSeq[r.Chat] = r.Seq
		if prev, ok := lastStream[r.Chat]; ok && (s.epoch < prev.epoch || s.epoch == prev.epoch && s.seq <= prev.seq) {
			problems = append(problems, fmt.Sprintf("chat %d: %q (stream seq %d) numbered after %q (stream seq %d)", r.Chat, r.ID, s.seq, prev.msg.ClientMsgID, prev.seq))
		}
		lastStream[r.Chat] = s
		key := [2]int64{r.Chat, r.Sender}
		if prev, ok := lastIndex[key]; ok && s.index < prev {
			problems = append(problems, fmt.Sprintf("chat %d: sender %d's message %d numbered after its message %d", r.Chat, r.Sender, s.index, prev))
		}
		lastIndex[key] = s.index
	}
	for id := range byID {
		if !seen[id] {
			problems = append(problems, fmt.Sprintf("%q sent, never stored", id))
		}
	}
	if len(problems) > 0 {
		t.Errorf("%d stored messages for %d sent; %d problems, first ones:\n%s", len(stored), len(sent), len(problems),
			strings.Join(problems[:min(len(problems), 10)], "\n"))
	}
}

const (
	leaderGauge   = "history_writer_leader"
	storedCounter = "history_writer_messages_stored_total"
	dupCounter    = "history_writer_duplicates_total"
	missingCount  = "history_writer_missing_messages_total"
)

// TestTwoWritersOneLeader: of two writers sharing the lock one stores and
// the other stands by, never both; every message of several concurrent
// senders is stored once, in stream order; when the leader stops (mid-load)
// it releases the lock and the standby takes it at once (the lock's TTL, a
// minute, is longer than the test waits) and stores the rest.
func TestTwoWritersOneLeader(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	type replica struct {
		id      string
		reg     *prometheus.Registry
		stop    context.CancelFunc
		stopped chan struct{}
	}
	var replicas []*replica
	for _, id := range []string{"writer-a", "writer-b"} {
		ctx, stop := context.WithCancel(context.Background())
		t.Cleanup(stop)
		r := &replica{id: id, stop: stop, stopped: make(chan struct{})}
		r.reg = e.startWriter(t, writerOpts{id: id, batchSize: 25, leaderTTL: time.Minute, ctx: ctx, stopped: r.stopped})
		replicas = append(replicas, r)
	}
	leading := func() []*replica {
		var out []*replica
		for _, r := range replicas {
			if readMetric(r.reg, leaderGauge) == 1 {
				out = append(out, r)
			}
		}
		return out
	}
	testenv.EventuallyDescribe(t, waitFor, func() bool { return len(leading()) == 1 },
		func() string { return fmt.Sprintf("%d writers lead, want 1", len(leading())) })
	leader, standby := replicas[0], replicas[1]
	if leading()[0] != leader {
		leader, standby = standby, leader
	}
	kv := e.lockKV(t)
	if got := lockHolder(t, kv); got != leader.id {
		t.Errorf("the lock names %q, want the leader %q", got, leader.id)
	}

	// Never two leaders at once, sampled throughout.
	var overlaps atomic.Int32
	sampling, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-sampling:
				return
			case <-tick.C:
				// Gauges are read one after the other: one writer's is
				// read again after the other's, so that a handover
				// between two reads does not look like an overlap.
				lead := func(r *replica) bool { return readMetric(r.reg, leaderGauge) == 1 }
				a, b := replicas[0], replicas[1]
				if (lead(a) && lead(b) && lead(a)) || (lead(b) && lead(a) && lead(b)) {
					overlaps.Add(1)
				}
			}
		}
	}()

	wait := e.startSenders(t, 4, 300, 3, "p")
	testenv.EventuallyDescribe(t, waitFor, func() bool { return readMetric(leader.reg, storedCounter) >= 200 },
		func() string {
			return fmt.Sprintf("the leader stored %v messages, want 200", readMetric(leader.reg, storedCounter))
		})
	if got := readMetric(standby.reg, storedCounter); got != 0 {
		t.Errorf("the standby stored %v messages while the other led", got)
	}
	leader.stop()
	select {
	case <-leader.stopped:
	case <-time.After(waitFor):
		t.Fatal("the leader did not stop")
	}
	testenv.Eventually(t, waitFor, func() bool { return readMetric(standby.reg, leaderGauge) == 1 },
		"the standby did not take the lock the leader released")
	if got := lockHolder(t, kv); got != standby.id {
		t.Errorf("the lock names %q, want the new leader %q", got, standby.id)
	}
	sent, retries := wait()
	for i := range 20 {
		sent = append(sent, e.mustPublish(t, streamMsg(1, 99, fmt.Sprintf("after-%d", i), "x"), i))
	}
	e.waitDrained(t)
	close(sampling)
	<-sampled

	if n := overlaps.Load(); n > 0 {
		t.Errorf("both writers led at once in %d samples", n)
	}
	e.checkStored(t, sent)
	a, b := readMetric(leader.reg, storedCounter), readMetric(standby.reg, storedCounter)
	if a+b != float64(len(sent)) || b < 20 {
		t.Errorf("the leader stored %v and the standby %v messages, want %d in all and the last 20 at least by the standby", a, b, len(sent))
	}
	if d := readMetric(leader.reg, dupCounter) + readMetric(standby.reg, dupCounter); d != float64(retries) {
		t.Errorf("%v duplicates counted, want the %d retries", d, retries)
	}
}

// firstCallStore holds its first StoreBatchAt until wait is closed and
// records that call's result.
type firstCallStore struct {
	writer.Store
	wait    <-chan struct{}
	entered chan struct{} // closed when the first call starts
	done    chan struct{} // closed when the first call returned
	err     error         // the first call's error, once done is closed
	calls   atomic.Int32
}

func newFirstCallStore(s writer.Store) *firstCallStore {
	return &firstCallStore{Store: s, entered: make(chan struct{}), done: make(chan struct{})}
}

func (s *firstCallStore) StoreBatchAt(ctx context.Context, msgs []history.Message, adv history.Advance) ([]history.Stored, error) {
	if s.calls.Add(1) != 1 {
		return s.Store.StoreBatchAt(ctx, msgs, adv)
	}
	close(s.entered)
	defer close(s.done)
	select {
	case <-s.wait:
	case <-time.After(waitFor):
		s.err = errors.New("the first batch waited in vain")
		return nil, s.err
	}
	stored, err := s.Store.StoreBatchAt(ctx, msgs, adv)
	s.err = err
	return stored, err
}

// TestPositionCompareAndSetWithTwoLeaders: two writers given different
// lock buckets both lead at once; the position's compare and set still
// stores every message once, numbered in stream order. The second writer's
// first batch is made to commit just after the first one's, from the same
// position: it must fail with ErrPositionMoved, and the writer go on from
// the stored position.
func TestPositionCompareAndSetWithTwoLeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	// A first batch for both.
	var sent []sentMsg
	for i := range 50 {
		sent = append(sent, e.mustPublish(t, streamMsg(int64(i%3+1), 9, fmt.Sprintf("first-%d", i), "x"), i))
	}
	a, b := newFirstCallStore(e.store), newFirstCallStore(e.store)
	a.wait, b.wait = b.entered, a.done
	regA := e.startWriter(t, writerOpts{store: a, id: "writer-a", batchSize: 25})
	regB := e.startWriter(t, writerOpts{store: b, id: "writer-b", lock: e.subj.HistoryWriterLock() + "_OTHER", batchSize: 25})
	testenv.Eventually(t, waitFor, func() bool {
		return readMetric(regA, leaderGauge) == 1 && readMetric(regB, leaderGauge) == 1
	}, "both writers should lead, each with its own lock")
	select {
	case <-b.done:
	case <-time.After(waitFor):
		t.Fatal("the second writer's first batch did not finish")
	}
	if a.err != nil {
		t.Errorf("the first writer's first batch: %v", a.err)
	}
	if !errors.Is(b.err, history.ErrPositionMoved) {
		t.Errorf("the second writer's first batch, from the same position: %v, want ErrPositionMoved", b.err)
	}

	more, retries := e.startSenders(t, 4, 250, 3, "p")()
	sent = append(sent, more...)
	e.waitDrained(t)
	e.checkStored(t, sent)
	sa, sb := readMetric(regA, storedCounter), readMetric(regB, storedCounter)
	if sa+sb != float64(len(sent)) {
		t.Errorf("the writers stored %v and %v messages, want %d in all", sa, sb, len(sent))
	}
	if d := readMetric(regA, dupCounter) + readMetric(regB, dupCounter); d != float64(retries) {
		t.Errorf("%v duplicates counted, want the %d retries", d, retries)
	}
	if got := readMetric(regB, "history_writer_failed_batches_total"); got < 1 {
		t.Errorf("the second writer counted %v failed batches, want its first at least", got)
	}
	// What one writer stored and purged is not missing for the other.
	if ma, mb := readMetric(regA, missingCount), readMetric(regB, missingCount); ma != 0 || mb != 0 {
		t.Errorf("missing messages counted: %v and %v, want none", ma, mb)
	}
	t.Logf("the writers stored %v and %v messages", sa, sb)
}

// countingStore counts the batches tried and the stored position's reads.
type countingStore struct {
	writer.Store
	batches, positionReads atomic.Int64
}

func (s *countingStore) StoreBatchAt(ctx context.Context, msgs []history.Message, adv history.Advance) ([]history.Stored, error) {
	s.batches.Add(1)
	return s.Store.StoreBatchAt(ctx, msgs, adv)
}

func (s *countingStore) StoredPosition(ctx context.Context, stream string) (uint64, bool, error) {
	s.positionReads.Add(1)
	return s.Store.StoredPosition(ctx, stream)
}

// TestLockTakenByAnotherHolder: a leader whose lock key is overwritten
// (as the load generator does to pause the writers) stops storing; what
// is published meanwhile stays pending while the other value holds; once
// the key is deleted the writer takes the lock again and stores it.
func TestLockTakenByAnotherHolder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	ctx := context.Background()
	store := &countingStore{Store: e.store}
	// The TTL outlasts the test: only the deletion frees the lock.
	reg := e.startWriter(t, writerOpts{store: store, id: "writer-a", leaderTTL: time.Minute, lagInterval: 20 * time.Millisecond})
	var sent []sentMsg
	for i := range 3 {
		sent = append(sent, e.mustPublish(t, streamMsg(2, 1, fmt.Sprintf("before-%d", i), "x"), i))
	}
	e.waitDrained(t)
	testenv.Eventually(t, waitFor, func() bool { return gauge(t, reg, leaderGauge) == 1 }, "the writer does not lead")

	kv := e.lockKV(t)
	if _, err := kv.Put(ctx, subjects.HistoryWriterLockKey, []byte("loadgen-pause")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, waitFor, func() bool { return gauge(t, reg, leaderGauge) == 0 },
		"the writer still leads after another took its lock")
	batches := store.batches.Load()
	for i := range 5 {
		sent = append(sent, e.mustPublish(t, streamMsg(2, 1, fmt.Sprintf("held-%d", i), "x"), 3+i))
	}
	const lag = "history_writer_consumer_lag_messages"
	testenv.EventuallyDescribe(t, waitFor, func() bool { return gauge(t, reg, lag) == 5 },
		func() string {
			return fmt.Sprintf("lag %v, want the 5 messages sent since the lock was taken", gauge(t, reg, lag))
		})
	// Ten more reads of the lag: all that time the messages stay pending.
	reads := store.positionReads.Load()
	testenv.Eventually(t, waitFor, func() bool { return store.positionReads.Load() >= reads+10 }, "the lag watcher stopped")
	if got := store.batches.Load(); got != batches {
		t.Errorf("the writer tried %d batches while another held its lock", got-batches)
	}
	if got := gauge(t, reg, lag); got != 5 {
		t.Errorf("lag %v while another holds the lock, want 5", got)
	}
	if pos, _, err := e.store.StoredPosition(ctx, e.subj.MessagesStream()); err != nil || pos != 3 {
		t.Errorf("stored position %d (%v) while another holds the lock, want 3", pos, err)
	}
	if got := lockHolder(t, kv); got != "loadgen-pause" {
		t.Errorf("the lock names %q, want the other holder's value kept", got)
	}

	if err := kv.Delete(ctx, subjects.HistoryWriterLockKey); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, waitFor, func() bool { return gauge(t, reg, leaderGauge) == 1 },
		"the writer did not take the lock again once it was deleted")
	e.waitDrained(t)
	if got := lockHolder(t, kv); got != "writer-a" {
		t.Errorf("the lock names %q, want writer-a", got)
	}
	e.checkStored(t, sent)
}

// TestPurgeStoredMessages: what is stored is purged from the stream, the
// last batches too when no more messages come.
func TestPurgeStoredMessages(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	e.startWriter(t, writerOpts{}) // the default purge interval, a second
	var sent []sentMsg
	for round := range 3 {
		for i := range 10 {
			sent = append(sent, e.mustPublish(t, streamMsg(3, 1, fmt.Sprintf("m-%d-%d", round, i), "x"), len(sent)))
		}
		e.waitDrained(t)
	}
	testenv.EventuallyDescribe(t, waitFor, func() bool {
		st := e.streamState(t)
		return st.Msgs == 0 && st.FirstSeq == 31 && st.LastSeq == 30
	}, func() string {
		st := e.streamState(t)
		return fmt.Sprintf("the stream holds %d messages, sequences %d to %d; want none, first 31", st.Msgs, st.FirstSeq, st.LastSeq)
	})
	e.checkStored(t, sent)
}

// TestStreamCreatedAgain: a stream deleted and created again starts its
// sequences over; the writer stores the new stream's messages from its
// first, and a repeat of a message stored from the old stream stays stored
// once.
func TestStreamCreatedAgain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	ctx := context.Background()
	reg := e.startWriter(t, writerOpts{})
	var sent []sentMsg
	for i := range 6 {
		sent = append(sent, e.mustPublish(t, streamMsg(6, 1, fmt.Sprintf("old-%d", i), "x"), i))
	}
	e.waitDrained(t)

	if err := e.js.DeleteStream(ctx, e.subj.MessagesStream()); err != nil {
		t.Fatal(err)
	}
	streamtest.CreateStream(t, e.js, e.subj)
	// Fewer messages than the old position: the consumer, gone on from
	// the old sequence, would never see them.
	if _, err := e.publish(sent[5].msg, "old-5:retry"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		s := e.mustPublish(t, streamMsg(6, 1, fmt.Sprintf("new-%d", i), "x"), 6+i)
		s.epoch = 1
		sent = append(sent, s)
	}
	e.waitDrained(t)
	if pos, _, err := e.store.StoredPosition(ctx, e.subj.MessagesStream()); err != nil || pos != 3 {
		t.Errorf("stored position %d (%v), want 3, the new stream's last", pos, err)
	}
	e.checkStored(t, sent)
	if got := metric(t, reg, dupCounter); got != 1 {
		t.Errorf("duplicates counter = %v, want 1 (the repeat)", got)
	}
	if got := metric(t, reg, missingCount); got != 0 {
		t.Errorf("missing messages counter = %v, want 0", got)
	}
}

// TestStreamDeletedWriterStops: while the stream is gone the writer keeps
// trying to read it again, and still stops at once when asked to.
func TestStreamDeletedWriterStops(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	streamtest.CreateStream(t, e.js, e.subj)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	stopped := make(chan struct{})
	e.startWriter(t, writerOpts{ctx: ctx, stopped: stopped})
	e.mustPublish(t, streamMsg(6, 1, "m", "x"), 0)
	e.waitDrained(t)

	// The writer's requests for a consumer on the stream, seen on the
	// JetStream API's subjects.
	creates, err := e.js.Conn().SubscribeSync("$JS.API.CONSUMER.CREATE." + e.subj.MessagesStream() + ".>")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = creates.Unsubscribe() }()
	if err := e.js.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if err := e.js.DeleteStream(ctx, e.subj.MessagesStream()); err != nil {
		t.Fatal(err)
	}
	if _, err := creates.NextMsg(waitFor); err != nil {
		t.Fatalf("the writer did not try to read the deleted stream again: %v", err)
	}
	stop()
	select {
	case <-stopped:
	case <-time.After(waitFor):
		t.Fatal("the writer did not stop while its stream was gone")
	}
}

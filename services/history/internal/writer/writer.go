// Package writer is the history writer: it reads the message stream in
// batches, stores each batch in one transaction (messages, and the edits
// and deletions of messages) together with its stream position, publishes
// the stored entries for fanout, and purges what it stored from the stream.
//
// The position (the last stream sequence stored) lives in PostgreSQL and
// moves with each batch by compare and set, so a crash anywhere means the
// next writer starts after the last committed batch (P1), every message is
// stored once and in stream order (P2) even when two writers overlap, and
// the store's unique key turns a sender's retry into a duplicate that keeps
// its original sequence number (P3). Only the replica holding the writers'
// lock reads the stream; the others stand by.
package writer

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/services/history/internal/history"
)

// Store writes batches of messages and keeps the writer's stream position.
type Store interface {
	// StoreBatchAt stores msgs (in stream order) in one transaction that
	// also moves the stream position as adv says, and returns each of
	// them as stored: with its sequence number, or, for an entry stored
	// before, the original and Duplicate set, or, for an edit or deletion
	// whose target failed the check, Rejected set. When the position is no
	// longer adv.From it stores nothing and returns
	// history.ErrPositionMoved.
	StoreBatchAt(ctx context.Context, msgs []history.Message, adv history.Advance) ([]history.Stored, error)
	// Position returns the last stream sequence stored from stream under
	// epoch, starting a new or re-created stream at firstSeq.
	Position(ctx context.Context, stream string, epoch int64, firstSeq uint64) (uint64, error)
	// StoredPosition returns the last stream sequence stored from stream
	// (false: none yet).
	StoredPosition(ctx context.Context, stream string) (uint64, bool, error)
}

// Event is a stored message to fan out, with the W3C trace context of its
// write.
type Event struct {
	Message history.Message
	Trace   map[string]string
	// Duplicate is true for a message that was already stored (a retry):
	// it goes back to its sender only, who learns its original sequence
	// number from it.
	Duplicate bool
}

// Publisher fans stored messages out to the gateways. Delivery is at most
// once: clients fill gaps from history.
type Publisher interface {
	Publish(ctx context.Context, events []Event) error
}

// Config configures a Writer. Zero fields take the defaults given.
type Config struct {
	// Stream is the name of the message stream. Required.
	Stream string
	// Lock is the name of the key-value bucket of the writers' lock.
	// Required.
	Lock string
	// ID names this replica in the lock. Default: the host name and a
	// random suffix.
	ID string
	// BatchSize is the most messages stored at once. Default 2000.
	BatchSize int
	// BatchWait is the longest a batch waits to fill. Default 10ms.
	BatchWait time.Duration
	// LeaderTTL is how long the lock outlives its holder's last renewal: a
	// standby takes over within about that after the holder dies. Default
	// 5s.
	LeaderTTL time.Duration
	// StoreTimeout bounds one attempt to store a batch. Default 30s.
	StoreTimeout time.Duration
	// PurgeInterval is how often, at most, the stream is purged below the
	// stored position. Default 1s.
	PurgeInterval time.Duration
	// RetryMin and RetryMax bound the backoff after a failure. Defaults
	// 100ms and 5s.
	RetryMin, RetryMax time.Duration
	// LagInterval is how often WatchLag reads the stream and the position.
	// Default 5s.
	LagInterval time.Duration
}

func (c *Config) setDefaults() {
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = host + "-" + rand.Text()[:10]
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 2000
	}
	if c.BatchWait <= 0 {
		c.BatchWait = 10 * time.Millisecond
	}
	if c.LeaderTTL <= 0 {
		c.LeaderTTL = 5 * time.Second
	}
	if c.StoreTimeout <= 0 {
		c.StoreTimeout = 30 * time.Second
	}
	if c.PurgeInterval <= 0 {
		c.PurgeInterval = time.Second
	}
	if c.RetryMin <= 0 {
		c.RetryMin = 100 * time.Millisecond
	}
	if c.RetryMax < c.RetryMin {
		c.RetryMax = max(5*time.Second, c.RetryMin)
	}
	if c.LagInterval <= 0 {
		c.LagInterval = 5 * time.Second
	}
}

// Writer moves messages from the stream into the store.
type Writer struct {
	js     jetstream.JetStream
	store  Store
	pub    Publisher
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	m      *metrics
	leader prometheus.Gauge
}

// New returns a Writer. Its metrics are registered on reg.
func New(js jetstream.JetStream, store Store, pub Publisher, cfg Config, logger *slog.Logger, tp trace.TracerProvider, reg prometheus.Registerer) (*Writer, error) {
	if cfg.Stream == "" || cfg.Lock == "" {
		return nil, errors.New("writer: stream and lock names are required")
	}
	cfg.setDefaults()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Writer{
		js: js, store: store, pub: pub, cfg: cfg, log: logger, m: m, leader: m.leader,
		tracer: tp.Tracer("github.com/communications/communications/services/history/internal/writer"),
		prop:   telemetry.Propagator(),
	}, nil
}

// ID returns the name this replica holds the writers' lock under.
func (w *Writer) ID() string { return w.cfg.ID }

// Run stores the stream's messages while this replica holds the writers'
// lock, and stands by while another does, until ctx ends. The batch being
// stored is finished (stored, published) before Run returns (one read
// ahead of it is left to the next writer), and the lock is then released
// so that a standby takes over at once. Run returns nil when
// ctx ends; it has no other way to stop: failures are logged and retried.
func (w *Writer) Run(ctx context.Context) error {
	w.log.InfoContext(ctx, "history writer starting", "stream", w.cfg.Stream, "lock", w.cfg.Lock, "id", w.cfg.ID,
		"batch_size", w.cfg.BatchSize, "batch_wait", w.cfg.BatchWait, "leader_ttl", w.cfg.LeaderTTL)
	retry := backoff{min: w.cfg.RetryMin, max: w.cfg.RetryMax}
	for ctx.Err() == nil {
		l, ok := w.acquire(ctx)
		if !ok {
			break
		}
		for l.ctx.Err() == nil {
			err := w.lead(l.ctx)
			if err == nil || l.ctx.Err() != nil {
				retry.reset()
				continue
			}
			if errors.Is(err, history.ErrPositionMoved) {
				// Another writer stored meanwhile (it held the lock
				// while this one did not know it had lost it): start
				// again from the stored position.
				w.log.WarnContext(l.ctx, "the stream position moved under this writer; reading it again", "err", err)
				continue
			}
			if errors.Is(err, errStreamReplaced) {
				w.log.WarnContext(l.ctx, "the message stream was created again; reading it from its start", "stream", w.cfg.Stream)
				continue
			}
			w.log.WarnContext(l.ctx, "history writer: reading the stream failed; starting again", "err", err, "retry_in", retry.delay())
			if !sleep(l.ctx, retry.delay()) {
				break
			}
			retry.grow()
		}
		w.release(l)
	}
	w.log.InfoContext(ctx, "history writer stopped")
	return nil
}

// errStreamReplaced means the message stream was deleted and created again
// (its sequences start over) while the writer read it.
var errStreamReplaced = errors.New("the message stream was created again")

// lead reads the stream from the stored position and stores it batch by
// batch until ctx ends (nil) or something fails (the error). It never
// returns with a batch half stored or stored and not published.
func (w *Writer) lead(ctx context.Context) (err error) {
	// The purges' check of the stream ends lead with errStreamReplaced
	// when the stream was created again (its new messages may never reach
	// the sequence the consumer waits for).
	ctx, endLead := context.WithCancelCause(ctx)
	defer func() {
		if err == nil && errors.Is(context.Cause(ctx), errStreamReplaced) {
			err = errStreamReplaced
		}
		endLead(nil)
	}()
	st, ok := w.stream(ctx)
	if !ok {
		return nil
	}
	info := st.CachedInfo()
	epoch := info.Created.UnixNano()
	pos, err := w.store.Position(ctx, w.cfg.Stream, epoch, info.State.FirstSeq)
	if err != nil {
		return err
	}
	cons, err := w.js.OrderedConsumer(ctx, w.cfg.Stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   pos + 1,
	})
	if err != nil {
		return fmt.Errorf("ordered consumer from %d: %w", pos+1, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(4 * w.cfg.BatchSize))
	if err != nil {
		return fmt.Errorf("read the stream from %d: %w", pos+1, err)
	}
	defer it.Stop()
	// The purges run beside, until lead returns.
	var stored atomic.Uint64
	stored.Store(pos)
	pctx, stopPurges := context.WithCancel(ctx)
	purgesDone := make(chan struct{})
	go func() {
		defer close(purgesDone)
		if w.purgeStored(pctx, st, epoch, &stored) {
			endLead(errStreamReplaced)
		}
	}()
	defer func() {
		stopPurges()
		<-purgesDone
	}()
	// Stored batches are published for fanout beside, in commit order,
	// while the next batch is stored; lead returns once they are out.
	jobs := make(chan fanoutJob, 1)
	published := make(chan struct{})
	go func() {
		defer close(published)
		w.publishStored(jobs)
	}()
	defer func() {
		close(jobs)
		<-published
	}()
	w.log.InfoContext(ctx, "history writer storing", "stream", w.cfg.Stream, "from", pos+1, "epoch", epoch)
	retry := backoff{min: w.cfg.RetryMin, max: w.cfg.RetryMax}
	// The next batch is read and decoded beside, while this one is
	// stored; one read ahead is dropped when lead returns (the next
	// leader reads it again from the stored position).
	reads := make(chan readBatch, 1)
	rctx, stopReading := context.WithCancel(ctx)
	// The ordered consumer recreates itself, without end, while the
	// stream is gone, inside Next and deaf to Next's context: stopping the
	// iterator when reading ends is what gets Next out.
	defer context.AfterFunc(rctx, it.Stop)()
	go w.read(rctx, it, st, epoch, reads)
	defer func() {
		stopReading()
		for range reads {
		}
	}()
	for ctx.Err() == nil {
		var rb readBatch
		select {
		case <-ctx.Done():
			return nil
		case rb = <-reads:
		}
		if ctx.Err() != nil {
			// Lock lost or stopping: a batch read meanwhile is left to
			// the next writer.
			return nil
		}
		msgs, items, err := rb.msgs, rb.items, rb.err
		if len(msgs) == 0 {
			// read sends no empty batch without an error.
			return err
		}
		adv := history.Advance{Stream: w.cfg.Stream, Epoch: epoch, From: pos, To: streamSeq(msgs[len(msgs)-1])}
		// The batch is finished even when ctx ends meanwhile: stored, or
		// given up when the position moved or ctx ended during a retry.
		var perr error
		var job fanoutJob
		for {
			job, perr = w.process(context.WithoutCancel(ctx), items, adv)
			if perr == nil || errors.Is(perr, history.ErrPositionMoved) {
				break
			}
			if !sleep(ctx, retry.delay()) {
				return nil
			}
			retry.grow()
		}
		if perr != nil {
			return perr
		}
		jobs <- job
		retry.reset()
		if first := streamSeq(msgs[0]); first > pos+1 {
			// The position moved from pos, so nothing stored these:
			// only what is stored is purged, so the stream was changed
			// from outside (a purge, a message deleted).
			w.m.skipped.Add(float64(first - pos - 1))
			w.log.ErrorContext(ctx, "stream messages gone before they were stored", "from", pos+1, "to", first-1)
		}
		pos = adv.To
		stored.Store(pos)
		if err != nil && ctx.Err() == nil {
			return err
		}
	}
	return nil
}

// readBatch is a batch read from the stream and decoded, or why reading
// stopped (err, with the messages read before it).
type readBatch struct {
	msgs  []jetstream.Msg
	items []item
	err   error
}

// read collects batches from it, checks that they come from the stream
// of epoch, decodes them and sends them on reads, until ctx ends or
// reading fails (its last batch then carries the error). It closes reads
// when it returns.
func (w *Writer) read(ctx context.Context, it jetstream.MessagesContext, st jetstream.Stream, epoch int64, reads chan<- readBatch) {
	defer close(reads)
	consumer := "" // the consumer that delivered the messages read so far
	for ctx.Err() == nil {
		msgs, err := w.collect(ctx, it)
		// Messages of a consumer not seen yet (the first, or one the
		// ordered consumer recreated) are checked to come from the same
		// stream: a stream created again starts its sequences over, and
		// the consumer would go on in it from the old sequence.
		n, verr := w.sameStream(ctx, st, epoch, msgs, &consumer)
		msgs = msgs[:n]
		if verr != nil {
			err = verr
		}
		if len(msgs) == 0 && err == nil {
			continue
		}
		rb := readBatch{msgs: msgs, err: err}
		if len(msgs) > 0 {
			rb.items = w.decodeBatch(ctx, msgs)
		}
		select {
		case reads <- rb:
		case <-ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// sameStream returns how many of msgs, read from st, come from the stream
// as it was under epoch, keeping in consumer the name of the consumer
// checked last; with fewer than all, an error: errStreamReplaced, or why
// the stream could not be checked.
func (w *Writer) sameStream(ctx context.Context, st jetstream.Stream, epoch int64, msgs []jetstream.Msg, consumer *string) (int, error) {
	for i, m := range msgs {
		md, err := m.Metadata()
		if err != nil || md.Consumer == *consumer {
			continue
		}
		info, err := st.Info(context.WithoutCancel(ctx))
		if err != nil {
			return i, fmt.Errorf("look up the message stream: %w", err)
		}
		if info.Created.UnixNano() != epoch {
			return i, errStreamReplaced
		}
		*consumer = md.Consumer
	}
	return len(msgs), nil
}

// stream waits, with backoff, until the message stream exists (the chat
// service owns and creates it) and returns it with fresh info; false when
// ctx ended first.
func (w *Writer) stream(ctx context.Context) (jetstream.Stream, bool) {
	retry := backoff{min: w.cfg.RetryMin, max: w.cfg.RetryMax}
	logged := false
	for {
		st, err := w.js.Stream(ctx, w.cfg.Stream)
		if err == nil {
			return st, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		if !logged {
			logged = true
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				w.log.WarnContext(ctx, "message stream does not exist yet; waiting for the chat service to create it", "stream", w.cfg.Stream)
			} else {
				w.log.WarnContext(ctx, "look up the message stream; retrying", "stream", w.cfg.Stream, "err", err)
			}
		}
		if !sleep(ctx, retry.delay()) {
			return nil, false
		}
		retry.grow()
	}
}

// purgeStored checks every PurgeInterval that st still is the stream of
// epoch, and purges it below the position stored, read from stored, when
// that moved, until ctx ends (false) or the stream turns out created again
// (true: a stream created again holds other messages under the same
// sequences, and lead must start over). A failed check or purge is only
// logged: the next one covers its messages.
func (w *Writer) purgeStored(ctx context.Context, st jetstream.Stream, epoch int64, stored *atomic.Uint64) bool {
	tick := time.NewTicker(w.cfg.PurgeInterval)
	defer tick.Stop()
	var purged uint64
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
		seq := stored.Load()
		if err := w.purge(ctx, st, epoch, seq, seq > purged); err != nil {
			if errors.Is(err, errStreamReplaced) {
				return true
			}
			if ctx.Err() == nil {
				w.log.WarnContext(ctx, "check the stream and purge stored messages", "up_to", seq, "err", err)
			}
			continue
		}
		purged = seq
	}
}

// purge returns errStreamReplaced unless st still is the stream of epoch,
// and then, with purge set, removes its messages up to seq. JetStream has
// no conditional purge: a stream deleted and created again between the
// check and the purge (two operator actions within milliseconds) would
// lose its first messages up to seq.
func (w *Writer) purge(ctx context.Context, st jetstream.Stream, epoch int64, seq uint64, purge bool) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	if info.Created.UnixNano() != epoch {
		return errStreamReplaced
	}
	if !purge {
		return nil
	}
	return st.Purge(ctx, jetstream.WithPurgeSequence(seq+1))
}

// collect returns the next batch: it waits for a first message as long as
// ctx lasts, then takes what arrives until the batch is full or BatchWait
// has passed since it started collecting. It may return messages and an
// error together.
func (w *Writer) collect(ctx context.Context, it jetstream.MessagesContext) ([]jetstream.Msg, error) {
	deadline := time.Now().Add(w.cfg.BatchWait)
	m, err := it.Next(jetstream.NextContext(ctx))
	if err != nil {
		return nil, nextErr(err)
	}
	msgs := make([]jetstream.Msg, 1, min(w.cfg.BatchSize, 64))
	msgs[0] = m
	for len(msgs) < w.cfg.BatchSize {
		wait := time.Until(deadline)
		if wait <= 0 {
			break
		}
		m, err := it.Next(jetstream.NextMaxWait(wait))
		if err != nil {
			if errors.Is(err, nats.ErrTimeout) {
				break
			}
			return msgs, nextErr(err)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

func nextErr(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return fmt.Errorf("read the message stream: %w", err)
}

// streamSeq returns a message's sequence number in the stream (0 when
// unknown).
func streamSeq(m jetstream.Msg) uint64 {
	md, err := m.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}

// item is one decoded message of a batch, with its span.
type item struct {
	subject string
	msg     history.Message
	ctx     context.Context
	span    trace.Span
}

// decodeBatch decodes a batch read from the stream. A message that can
// never be stored is counted, logged and left out: it must not block the
// stream (the position still moves past it).
func (w *Writer) decodeBatch(ctx context.Context, raw []jetstream.Msg) []item {
	items := make([]item, 0, len(raw))
	for _, r := range raw {
		m, err := decode(r)
		if err != nil {
			w.m.malformed.Inc()
			w.log.ErrorContext(ctx, "malformed stream message skipped", "subject", r.Subject(), "stream_seq", streamSeq(r), "err", err)
			continue
		}
		mctx := w.prop.Extract(ctx, natsbus.HeaderCarrier(r.Headers()))
		items = append(items, item{subject: r.Subject(), msg: m, ctx: mctx})
	}
	return items
}

// fanoutJob is a committed batch waiting for its fanout publish, with the
// spans that end once it is out.
type fanoutJob struct {
	ctx    context.Context // the batch span's
	span   trace.Span
	items  []item
	events []Event
}

// fanoutTimeout bounds the fanout publish of one batch.
const fanoutTimeout = 10 * time.Second

// publishStored publishes the jobs' events for fanout, one job after the
// other in the order committed, until jobs is closed.
func (w *Writer) publishStored(jobs <-chan fanoutJob) {
	for j := range jobs {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(j.ctx), fanoutTimeout)
		ctx, span := w.tracer.Start(ctx, "history fanout publish",
			trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(attribute.String("db.system", "redis"), attribute.Int("messaging.batch.message_count", len(j.events))))
		if err := w.pub.Publish(ctx, j.events); err != nil {
			w.m.fanoutErrors.Inc()
			span.RecordError(err)
			span.SetStatus(codes.Error, "publish failed")
			w.log.WarnContext(ctx, "publish stored messages for fanout; clients fill the gap from history",
				"messages", len(j.events), "err", err)
		}
		span.End()
		cancel()
		for _, it := range j.items {
			it.span.End()
		}
		j.span.End()
	}
}

// process stores one batch with its position and returns what is to be
// published for fanout. It returns the store's error
// (history.ErrPositionMoved when another writer stored meanwhile).
func (w *Writer) process(ctx context.Context, items []item, adv history.Advance) (fanoutJob, error) {
	sctx, cancel := context.WithTimeout(ctx, w.cfg.StoreTimeout)
	defer cancel()
	links := make([]trace.Link, len(items))
	for i, it := range items {
		links[i] = trace.LinkFromContext(it.ctx)
	}
	w.m.batchMessages.Observe(float64(len(items)))

	bctx, bspan := w.tracer.Start(ctx, "history write batch",
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "process"),
			attribute.Int64("messaging.nats.stream_sequence.first", int64(adv.From+1)),
			attribute.Int64("messaging.nats.stream_sequence.last", int64(adv.To)),
			attribute.Int("messaging.batch.message_count", len(items))))
	// Each message's own trace continues here, linked to the batch.
	batchLink := trace.LinkFromContext(bctx)
	msgs := make([]history.Message, len(items))
	for i := range items {
		it := &items[i]
		it.ctx, it.span = w.tracer.Start(it.ctx, "history store message",
			trace.WithSpanKind(trace.SpanKindConsumer), trace.WithLinks(batchLink),
			trace.WithAttributes(
				attribute.String("messaging.system", "nats"),
				attribute.String("messaging.destination.name", it.subject),
				attribute.Int64("chat.id", it.msg.ChatID)))
		msgs[i] = it.msg
	}
	endSpans := func() {
		for _, it := range items {
			it.span.End()
		}
		bspan.End()
	}

	start := time.Now()
	stored, err := w.store.StoreBatchAt(trace.ContextWithSpan(sctx, bspan), msgs, adv)
	if err != nil {
		w.m.failedBatches.Inc()
		bspan.RecordError(err)
		bspan.SetStatus(codes.Error, "store batch failed")
		for _, it := range items {
			it.span.SetStatus(codes.Error, "store batch failed")
		}
		if !errors.Is(err, history.ErrPositionMoved) {
			w.log.ErrorContext(bctx, "store batch failed; trying it again", "messages", len(items), "err", err)
		}
		endSpans()
		return fanoutJob{}, err
	}
	w.m.commitSeconds.Observe(time.Since(start).Seconds())

	// Committed: every stored message is to be published. Duplicates are marked, so
	// that gateways send them to their sender only: a retrying sender
	// learns its message's original sequence number from it, and nobody
	// else sees the message twice.
	// A rejected change (its target was deleted meanwhile, say) is
	// stored nowhere and published to nobody.
	events := make([]Event, 0, len(stored))
	dups, rejected := 0, 0
	for i, s := range stored {
		it := items[i]
		if s.Rejected != nil {
			rejected++
			it.span.SetAttributes(attribute.String("history.rejected", s.Rejected.Error()))
			w.log.WarnContext(it.ctx, "change of a message rejected; nothing stored",
				"chat_id", s.ChatID, "kind", string(s.Kind), "target_seq", s.TargetSeq, "sender_id", s.SenderID, "reason", s.Rejected.Error())
			continue
		}
		it.span.SetAttributes(attribute.Int64("chat.seq", s.Seq), attribute.Bool("history.duplicate", s.Duplicate))
		carrier := propagation.MapCarrier{}
		w.prop.Inject(it.ctx, carrier)
		events = append(events, Event{Message: s.Message, Trace: carrier, Duplicate: s.Duplicate})
		if s.Duplicate {
			dups++
		}
	}
	w.m.stored.Add(float64(len(stored) - dups - rejected))
	w.m.duplicates.Add(float64(dups))
	w.m.rejected.Add(float64(rejected))
	return fanoutJob{ctx: bctx, span: bspan, items: items, events: events}, nil
}

// decode reads a stream message. A message it rejects can never be stored.
func decode(r jetstream.Msg) (history.Message, error) {
	var sm busapi.StreamMessage
	if err := json.Unmarshal(r.Data(), &sm); err != nil {
		return history.Message{}, fmt.Errorf("decode stream message: %w", err)
	}
	if sm.ChatID <= 0 || sm.ClientMsgID == "" {
		return history.Message{}, errors.New("stream message lacks chat_id or client_msg_id")
	}
	if strings.IndexByte(sm.Sender, 0) >= 0 || strings.IndexByte(sm.ClientMsgID, 0) >= 0 {
		// The chat service never writes these (usernames and client ids
		// are printable ASCII); PostgreSQL could never store them.
		return history.Message{}, errors.New("stream message's sender or client_msg_id holds NUL")
	}
	kind := history.Kind(sm.Kind)
	switch {
	case kind == history.KindMessage && sm.TargetSeq != 0:
		return history.Message{}, errors.New("a message has no target_seq")
	case kind == history.KindEdit, kind == history.KindDelete:
		if sm.TargetSeq <= 0 {
			return history.Message{}, fmt.Errorf("%s without a target_seq", kind)
		}
	case kind != history.KindMessage:
		return history.Message{}, fmt.Errorf("unknown kind %q", sm.Kind)
	}
	sentAt := sm.AcceptedAt
	if sentAt.IsZero() {
		if md, err := r.Metadata(); err == nil {
			sentAt = md.Timestamp
		}
	}
	text := sm.Text
	if kind == history.KindDelete {
		text = ""
	}
	if strings.IndexByte(text, 0) >= 0 {
		// PostgreSQL's text cannot hold NUL, and a batch it refuses would
		// be retried for ever. The chat service refuses such a text; one
		// it accepted before it did is stored with U+FFFD in its place.
		text = strings.ReplaceAll(text, "\x00", "\uFFFD")
	}
	return history.Message{
		ChatID: sm.ChatID, Kind: kind, TargetSeq: sm.TargetSeq, SenderID: sm.SenderID, Sender: sm.Sender,
		ClientMsgID: sm.ClientMsgID, Text: text, SentAt: sentAt,
	}, nil
}

// backoff is a doubling delay between min and max.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) delay() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	}
	return b.cur
}

func (b *backoff) grow()  { b.cur = min(2*b.delay(), b.max) }
func (b *backoff) reset() { b.cur = b.min }

// sleep waits d, reporting false when ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

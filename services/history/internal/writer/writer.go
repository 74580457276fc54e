// Package writer is the history writer: it consumes the message stream in
// batches as a durable JetStream pull consumer, stores each batch in one
// transaction (messages, and the edits and deletions of messages), publishes
// the stored entries for fanout, and acknowledges them.
//
// A message is acknowledged only after the transaction holding it has
// committed, so a crash anywhere before that redelivers it (P1); the store's
// unique key turns every redelivery into a duplicate that keeps its original
// sequence number (P3).
package writer

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

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

// Store writes batches of messages.
type Store interface {
	// StoreBatch stores msgs (in stream order) in one transaction and
	// returns each of them as stored: with its sequence number, or, for an
	// entry stored before, the original and Duplicate set, or, for an edit
	// or deletion whose target failed the check, Rejected set.
	StoreBatch(ctx context.Context, msgs []history.Message) ([]history.Stored, error)
}

// priorityGroup is the consumer's one priority group; the replica pinned to
// it is the only one receiving messages.
const priorityGroup = "writers"

// Event is a stored message to fan out, with the W3C trace context of its
// write.
type Event struct {
	Message history.Message
	Trace   map[string]string
	// Duplicate is true for a message that was already stored (a retry or
	// a redelivery): it goes back to its sender only, who learns its
	// original sequence number from it.
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
	// Consumer is the durable consumer name shared by all replicas.
	// Required.
	Consumer string
	// BatchSize is the most messages fetched and stored at once. Default
	// 500.
	BatchSize int
	// BatchWait is the longest a fetch waits to fill a batch. Default 20ms.
	BatchWait time.Duration
	// AckWait is how long JetStream waits for an ack before redelivering;
	// a batch not stored within it is abandoned. Default 30s.
	AckWait time.Duration
	// PinnedTTL is how long the pinned replica may go without pulling
	// before another replica takes over. Default 5s.
	PinnedTTL time.Duration
	// MaxAckPending bounds the messages delivered and not yet acked, over
	// all replicas. Default 2 x BatchSize.
	MaxAckPending int
	// RetryMin and RetryMax bound the backoff after a failure (and the
	// redelivery delay of a failed batch). Defaults 100ms and 5s.
	RetryMin, RetryMax time.Duration
	// LagInterval is how often WatchLag reads the consumer's pending
	// messages. Default 5s.
	LagInterval time.Duration
}

func (c *Config) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.BatchWait <= 0 {
		c.BatchWait = 20 * time.Millisecond
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 2 * c.BatchSize
	}
	if c.PinnedTTL <= 0 {
		c.PinnedTTL = 5 * time.Second
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

// consumerCheckInterval is how often an idle writer checks that its
// consumer still exists (a fetch on a deleted consumer just times out).
const consumerCheckInterval = 5 * time.Second

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
}

// New returns a Writer. Its metrics are registered on reg.
func New(js jetstream.JetStream, store Store, pub Publisher, cfg Config, logger *slog.Logger, tp trace.TracerProvider, reg prometheus.Registerer) (*Writer, error) {
	if cfg.Stream == "" || cfg.Consumer == "" {
		return nil, errors.New("writer: stream and consumer names are required")
	}
	cfg.setDefaults()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Writer{
		js: js, store: store, pub: pub, cfg: cfg, log: logger, m: m,
		tracer: tp.Tracer("github.com/communications/communications/services/history/internal/writer"),
		prop:   telemetry.Propagator(),
	}, nil
}

// Run consumes the stream until ctx ends. A batch already fetched is
// finished (stored, acked, published) before Run returns, so cancelling
// ctx stops the writer after its current batch. Run returns nil when ctx
// ends; it has no other way to stop: failures are logged and retried.
func (w *Writer) Run(ctx context.Context) error {
	cons, ok := w.consumer(ctx)
	if !ok {
		return nil
	}
	w.log.InfoContext(ctx, "history writer consuming", "stream", w.cfg.Stream, "consumer", w.cfg.Consumer,
		"batch_size", w.cfg.BatchSize, "batch_wait", w.cfg.BatchWait)
	retry := backoff{min: w.cfg.RetryMin, max: w.cfg.RetryMax}
	lastCheck := time.Now()
	var ord order
	for ctx.Err() == nil {
		msgs, fetchErr := w.fetch(cons)
		failed := false
		if len(msgs) > 0 {
			var later []jetstream.Msg
			msgs, later = w.inOrder(ctx, cons, &ord, msgs)
			if len(msgs) > 0 {
				// The batch runs to its end even when ctx ends meanwhile.
				failed = w.process(context.WithoutCancel(ctx), msgs, retry.delay()) != nil
				if !failed {
					ord.stored(msgs)
				}
			}
			if len(later) > 0 {
				w.m.heldBack.Add(float64(len(later)))
				for _, m := range later {
					_ = m.NakWithDelay(retry.delay())
				}
				failed = true
			}
		}
		if fetchErr != nil {
			w.log.WarnContext(ctx, "fetch from message stream", "err", fetchErr, "retry_in", retry.delay())
			failed = true
		}
		if failed {
			// Wait a little past the redelivery delay: a failed batch's
			// messages are then due again, and JetStream hands out due
			// redeliveries before newer messages, so a chat's messages
			// keep their stream order.
			if !sleep(ctx, retry.delay()*3/2) {
				break
			}
			retry.grow()
		} else {
			retry.reset()
		}
		if (fetchErr != nil && consumerGone(fetchErr)) || (len(msgs) == 0 && time.Since(lastCheck) > consumerCheckInterval) {
			lastCheck = time.Now()
			if _, err := cons.Info(ctx); consumerGone(err) {
				w.log.WarnContext(ctx, "history writer consumer is gone; declaring it again", "err", err)
				if cons, ok = w.consumer(ctx); !ok {
					break
				}
			}
		}
	}
	w.log.InfoContext(ctx, "history writer stopped")
	return nil
}

func consumerGone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
		errors.Is(err, jetstream.ErrStreamNotFound)
}

// consumer declares the durable consumer, waiting with backoff until the
// stream exists: the chat service owns and creates it. It reports false
// when ctx ended first.
func (w *Writer) consumer(ctx context.Context) (jetstream.Consumer, bool) {
	retry := backoff{min: w.cfg.RetryMin, max: w.cfg.RetryMax}
	logged := false
	for {
		cons, err := w.js.CreateOrUpdateConsumer(ctx, w.cfg.Stream, jetstream.ConsumerConfig{
			Durable:       w.cfg.Consumer,
			Description:   "History writer: stores accepted messages and numbers them per chat.",
			DeliverPolicy: jetstream.DeliverAllPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       w.cfg.AckWait,
			MaxAckPending: w.cfg.MaxAckPending,
			// One replica at a time is pinned and receives batches; the
			// others stand by and take over when it stops pulling for
			// PinnedTTL. Batches therefore commit in stream order.
			PriorityPolicy: jetstream.PriorityPolicyPinned,
			PriorityGroups: []string{priorityGroup},
			PinnedTTL:      w.cfg.PinnedTTL,
			// Never give up on a message: it is acked once stored, or
			// terminated when it cannot be decoded.
			MaxDeliver: -1,
		})
		if err == nil {
			if logged {
				w.log.InfoContext(ctx, "history writer consumer declared", "stream", w.cfg.Stream, "consumer", w.cfg.Consumer)
			}
			return cons, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		if !logged {
			logged = true
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				w.log.WarnContext(ctx, "message stream does not exist yet; waiting for the chat service to create it", "stream", w.cfg.Stream)
			} else {
				w.log.WarnContext(ctx, "declare history writer consumer; retrying", "stream", w.cfg.Stream, "err", err)
			}
		}
		if !sleep(ctx, retry.delay()) {
			return nil, false
		}
		retry.grow()
	}
}

// order is what the writer knows about the stream order of what it stored.
type order struct {
	// next is the stream sequence after the last message this writer
	// stored (0: it has stored nothing yet).
	next uint64
	// waitingSince is when the writer first held a batch back behind
	// older messages delivered elsewhere (zero: it is not waiting).
	waitingSince time.Time
}

func (o *order) stored(msgs []jetstream.Msg) {
	o.next = streamSeq(msgs[len(msgs)-1]) + 1
	o.waitingSince = time.Time{}
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

// inOrder sorts a fetched batch into stream order and returns the part that
// may be stored now; the rest is to be handed back (nak) and fetched again.
//
// Messages that another writer received and did not acknowledge (it was
// killed, or lost its pin) come back only after AckWait, while newer ones
// flow to this writer at once. Numbering the newer ones first would store
// one sender's messages out of their sending order (P2). So a batch is
// stored only when nothing older is unacknowledged: its first message
// follows the last one this writer stored, or the consumer's ack floor
// (every message up to it acknowledged). Within the batch, only the
// contiguous run of stream sequences is stored. If the floor does not
// move for twice AckWait (a message gone from the stream), the writer stops
// waiting and logs it.
func (w *Writer) inOrder(ctx context.Context, cons jetstream.Consumer, o *order, msgs []jetstream.Msg) (now, later []jetstream.Msg) {
	slices.SortStableFunc(msgs, func(a, b jetstream.Msg) int { return cmp.Compare(streamSeq(a), streamSeq(b)) })
	first := streamSeq(msgs[0])
	if first != 0 && first != o.next {
		floor, err := ackFloor(ctx, cons)
		switch {
		case err == nil && first == floor+1:
		case !o.waitingSince.IsZero() && time.Since(o.waitingSince) > 2*w.cfg.AckWait:
			w.log.WarnContext(ctx, "older stream messages still unacknowledged; storing newer ones anyway",
				"first", first, "ack_floor", floor, "waited", time.Since(o.waitingSince), "err", err)
		default:
			if o.waitingSince.IsZero() {
				o.waitingSince = time.Now()
				w.log.InfoContext(ctx, "older stream messages are unacknowledged (another writer had them); waiting for their redelivery",
					"first", first, "ack_floor", floor, "err", err)
			}
			return nil, msgs
		}
	}
	// In order (or done waiting): a later wait starts its own clock.
	o.waitingSince = time.Time{}
	for i := 1; i < len(msgs); i++ {
		if streamSeq(msgs[i]) != streamSeq(msgs[i-1])+1 {
			return msgs[:i], msgs[i:]
		}
	}
	return msgs, nil
}

// ackFloor returns the stream sequence up to which the consumer has every
// message acknowledged.
func ackFloor(ctx context.Context, cons jetstream.Consumer) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.AckFloor.Stream, nil
}

// fetch returns up to BatchSize messages, waiting at most BatchWait to fill
// the batch. It may return messages and an error together.
func (w *Writer) fetch(cons jetstream.Consumer) ([]jetstream.Msg, error) {
	batch, err := cons.Fetch(w.cfg.BatchSize, jetstream.FetchMaxWait(w.cfg.BatchWait), jetstream.FetchPriorityGroup(priorityGroup))
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if err := batch.Error(); err != nil {
		return msgs, fmt.Errorf("fetch: %w", err)
	}
	return msgs, nil
}

// item is one decoded message of a batch, with its span.
type item struct {
	raw  jetstream.Msg
	msg  history.Message
	ctx  context.Context
	span trace.Span
}

// process stores, acks and publishes one batch. When the store fails, the
// messages are negatively acked with nakDelay and the error returned.
func (w *Writer) process(ctx context.Context, raw []jetstream.Msg, nakDelay time.Duration) error {
	// Past AckWait JetStream redelivers the batch anyway.
	ctx, cancel := context.WithTimeout(ctx, w.cfg.AckWait)
	defer cancel()

	items := make([]item, 0, len(raw))
	links := make([]trace.Link, 0, len(raw))
	for _, r := range raw {
		m, err := decode(r)
		if err != nil {
			// A message that can never be stored must not block the stream.
			w.m.terminated.Inc()
			w.log.ErrorContext(ctx, "malformed stream message terminated", "subject", r.Subject(), "err", err)
			if err := r.Term(); err != nil {
				w.log.WarnContext(ctx, "terminate malformed stream message", "subject", r.Subject(), "err", err)
			}
			continue
		}
		mctx := w.prop.Extract(ctx, natsbus.HeaderCarrier(r.Headers()))
		links = append(links, trace.LinkFromContext(mctx))
		items = append(items, item{raw: r, msg: m, ctx: mctx})
	}
	if len(items) == 0 {
		return nil
	}
	w.m.batchMessages.Observe(float64(len(items)))

	bctx, bspan := w.tracer.Start(ctx, "history write batch",
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.consumer.group.name", w.cfg.Consumer),
			attribute.Int("messaging.batch.message_count", len(items))))
	defer bspan.End()
	// Each message's own trace continues here, linked to the batch.
	batchLink := trace.LinkFromContext(bctx)
	msgs := make([]history.Message, len(items))
	for i := range items {
		it := &items[i]
		it.ctx, it.span = w.tracer.Start(it.ctx, "history store message",
			trace.WithSpanKind(trace.SpanKindConsumer), trace.WithLinks(batchLink),
			trace.WithAttributes(
				attribute.String("messaging.system", "nats"),
				attribute.String("messaging.destination.name", it.raw.Subject()),
				attribute.Int64("chat.id", it.msg.ChatID)))
		msgs[i] = it.msg
	}
	defer func() {
		for _, it := range items {
			it.span.End()
		}
	}()

	start := time.Now()
	stored, err := w.store.StoreBatch(bctx, msgs)
	if err != nil {
		w.m.failedBatches.Inc()
		bspan.RecordError(err)
		bspan.SetStatus(codes.Error, "store batch failed")
		for _, it := range items {
			it.span.SetStatus(codes.Error, "store batch failed")
			if err := it.raw.NakWithDelay(nakDelay); err != nil {
				// Without the nak, AckWait brings the message back.
				w.log.DebugContext(it.ctx, "nak stream message", "err", err)
			}
		}
		w.log.ErrorContext(bctx, "store batch failed; its messages will be redelivered",
			"messages", len(items), "redeliver_in", nakDelay, "err", err)
		return err
	}
	w.m.commitSeconds.Observe(time.Since(start).Seconds())

	// Committed: publish every stored message. Duplicates are marked, so
	// that gateways send them to their sender only: a retrying sender
	// learns its message's original sequence number from it, and nobody
	// else sees the message twice.
	// A rejected change (its target was deleted meanwhile, say) is
	// stored nowhere and published to nobody; it is acked with the rest.
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
	if err := w.pub.Publish(bctx, events); err != nil {
		w.m.fanoutErrors.Inc()
		bspan.RecordError(err)
		w.log.WarnContext(bctx, "publish stored messages for fanout; clients fill the gap from history",
			"messages", len(events), "err", err)
	}

	// Committed and published: now ack, so the next batch (on any replica)
	// is fetched only after this one's events went out, and fanout follows
	// sequence order. Ack does not wait for the server's confirmation
	// (AckSync would cost a round trip per message). An ack that is lost
	// only brings the message back after AckWait; the store then finds it
	// stored and returns its original sequence number.
	var ackErr error
	for _, it := range items {
		if err := it.raw.Ack(); err != nil && ackErr == nil {
			ackErr = err
		}
	}
	if ackErr != nil {
		w.log.WarnContext(bctx, "ack stored messages; they will be redelivered and found stored", "err", ackErr)
	}
	return nil
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

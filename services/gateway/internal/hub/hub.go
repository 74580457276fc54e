// Package hub fans chat events out to the gateway's local connections. It
// keeps one Redis pub/sub connection per gateway, subscribed to the channel
// of every chat that at least one local connection is in, and hands each
// event to every local member's connection without blocking.
package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/fanout"
	"github.com/communications/communications/libs/telemetry"
)

// Sink receives events for one connection. Deliver must not block: a sink
// that cannot take an event disconnects its client.
type Sink interface {
	// DeliverMessage hands over a stored message event of chat with its
	// sequence number; duplicate marks a message published again for its
	// retrying sender.
	DeliverMessage(chatID, seq int64, duplicate bool, event []byte)
	// DeliverEphemeral hands over an event of chat that is not part of its
	// history (a typing indicator) from another user; the sink shows it
	// only if it views the chat, and may drop it.
	DeliverEphemeral(chatID int64, event []byte)
	// UserID is the connection's user; events marked duplicate go to
	// their sender's connections only, ephemeral ones to everyone else's.
	UserID() int64
}

// Flusher is a Sink that may keep the messages handed to it under the
// hub's lock until Flush, which the hub calls once the lock is released:
// writing to sockets there would hold the lock for a system call per
// member.
type Flusher interface {
	Flush()
}

type channelState struct {
	refs      int
	confirmed chan struct{}
	once      sync.Once
}

func (s *channelState) confirm() { s.once.Do(func() { close(s.confirmed) }) }

// Hub routes events from Redis to sinks.
type Hub struct {
	prefix string
	rdb    *redis.Client
	ps     *redis.PubSub
	msgs   <-chan any
	log    *slog.Logger
	tracer trace.Tracer

	// cmdMu orders subscription changes: the decision to subscribe or
	// unsubscribe a channel and the command sent to Redis happen under it
	// together, so Redis sees the commands in the order decided.
	cmdMu sync.Mutex
	// mu guards the maps; dispatch only needs it for reading.
	mu       sync.RWMutex
	chats    map[int64]map[Sink]struct{}
	channels map[string]*channelState

	delivered prometheus.Counter
	received  prometheus.Counter
	dropped   prometheus.Counter
	latency   prometheus.Histogram
	clamped   prometheus.Counter
}

// New subscribes nothing yet; Run must be running for Join to complete.
func New(ctx context.Context, rdb *redis.Client, prefix string, log *slog.Logger, tp trace.TracerProvider, reg prometheus.Registerer) *Hub {
	ps := rdb.Subscribe(ctx)
	h := &Hub{
		prefix:   prefix,
		rdb:      rdb,
		ps:       ps,
		msgs:     ps.ChannelWithSubscriptions(redis.WithChannelSize(8192)),
		log:      log,
		tracer:   tp.Tracer("github.com/communications/communications/services/gateway/internal/hub"),
		chats:    map[int64]map[Sink]struct{}{},
		channels: map[string]*channelState{},
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gateway_fanout_events_received_total", Help: "Chat events received from Redis pub/sub.",
		}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gateway_fanout_deliveries_total", Help: "Chat events handed to local connections.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gateway_fanout_events_malformed_total", Help: "Events from Redis that could not be decoded.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "gateway_fanout_latency_seconds",
			Help: "From a message's acceptance by the chat service (the time carried in its event) to its hand-off to this gateway's local connections; new messages, edits and deletions, not duplicates.",
			// 1 ms to about 65 s: a writer that fell behind delays
			// messages by tens of seconds.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 17),
		}),
		clamped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gateway_fanout_latency_clamped_total",
			Help: "Fanout latencies that came out negative (the chat service's clock ahead of this gateway's) and were observed as 0.",
		}),
	}
	reg.MustRegister(h.received, h.delivered, h.dropped, h.latency, h.clamped)
	return h
}

// Join adds s to the given chats, subscribing the chats' channels that no
// local connection had yet, and returns when Redis has confirmed them all.
func (h *Hub) Join(ctx context.Context, s Sink, chatIDs []int64) error {
	var newChannels []string
	var waits []chan struct{}
	h.cmdMu.Lock()
	h.mu.Lock()
	for _, id := range chatIDs {
		members := h.chats[id]
		if members == nil {
			members = map[Sink]struct{}{}
			h.chats[id] = members
		}
		members[s] = struct{}{}
		ch := fanout.Channel(h.prefix, id)
		st := h.channels[ch]
		if st == nil {
			st = &channelState{confirmed: make(chan struct{})}
			h.channels[ch] = st
			newChannels = append(newChannels, ch)
		}
		st.refs++
		waits = append(waits, st.confirmed)
	}
	h.mu.Unlock()
	var err error
	if len(newChannels) > 0 {
		err = h.ps.Subscribe(ctx, newChannels...)
	}
	h.cmdMu.Unlock()
	if err != nil {
		h.Leave(s, chatIDs)
		return fmt.Errorf("subscribe %d chats: %w", len(newChannels), err)
	}
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			h.Leave(s, chatIDs)
			return fmt.Errorf("wait for subscription: %w", ctx.Err())
		}
	}
	return nil
}

// Leave removes s from the chats, unsubscribing channels no local
// connection needs any more.
func (h *Hub) Leave(s Sink, chatIDs []int64) {
	var gone []string
	h.cmdMu.Lock()
	defer h.cmdMu.Unlock()
	h.mu.Lock()
	for _, id := range chatIDs {
		members, ok := h.chats[id]
		if !ok {
			continue
		}
		if _, ok := members[s]; !ok {
			continue
		}
		delete(members, s)
		if len(members) == 0 {
			delete(h.chats, id)
		}
		ch := fanout.Channel(h.prefix, id)
		if st := h.channels[ch]; st != nil {
			st.refs--
			if st.refs <= 0 {
				delete(h.channels, ch)
				gone = append(gone, ch)
			}
		}
	}
	h.mu.Unlock()
	if len(gone) > 0 {
		if err := h.ps.Unsubscribe(context.Background(), gone...); err != nil {
			h.log.Warn("unsubscribe", "channels", len(gone), "err", err)
		}
	}
}

// dispatchQueue is how many events each dispatcher holds before Run waits
// for it.
const dispatchQueue = 1024

// Run dispatches events until ctx ends, then closes the subscription.
// Events are handed to the local connections by one dispatcher per
// processor (at least two), each taking the chats whose id falls to it:
// a chat's events keep their order, and the connections' writes, which
// the dispatchers make themselves while the sockets have room, run in
// parallel (on a busy machine the kernel gives one thread a share of the
// cores, not the cores; one dispatcher for all fell behind by seconds at
// 25,000 deliveries a second, docs/benchmarks.md).
func (h *Hub) Run(ctx context.Context) error {
	defer h.ps.Close()
	queues := make([]chan *redis.Message, max(2, runtime.GOMAXPROCS(0)))
	var wg sync.WaitGroup
	for i := range queues {
		q := make(chan *redis.Message, dispatchQueue)
		queues[i] = q
		wg.Go(func() {
			var flush []Flusher
			for m := range q {
				flush = h.dispatch(ctx, m, flush[:0])
			}
		})
	}
	defer func() {
		for _, q := range queues {
			close(q)
		}
		wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-h.msgs:
			if !ok {
				return nil
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					h.mu.RLock()
					st := h.channels[m.Channel]
					h.mu.RUnlock()
					if st != nil {
						st.confirm()
					}
				}
			case *redis.Message:
				chatID, ok := h.chatOf(m.Channel)
				if !ok {
					h.dispatch(ctx, m, nil) // counted as malformed
					continue
				}
				select {
				case queues[uint64(chatID)%uint64(len(queues))] <- m:
				case <-ctx.Done():
					return nil
				}
			}
		}
	}
}

// flushChunk is how many members' flushes (a system call each) a
// dispatcher makes itself for one event; a larger fanout's are spread over
// goroutines, so that one large chat does not hold up the dispatcher's
// other chats for thousands of calls. Order holds either way: each
// connection's events are queued in order before its flush, which only
// writes what is queued.
const flushChunk = 256

// flushAll flushes fs: the first flushChunk here, the rest in chunks on
// goroutines of their own.
func flushAll(fs []Flusher) {
	if len(fs) > flushChunk {
		// fs is the dispatcher's buffer, reused by its next event.
		for chunk := range slices.Chunk(slices.Clone(fs[flushChunk:]), flushChunk) {
			go func() {
				for _, f := range chunk {
					f.Flush()
				}
			}()
		}
		fs = fs[:flushChunk]
	}
	for _, f := range fs {
		f.Flush()
	}
}

// dispatch hands m to its chat's local members and returns flush, the
// buffer of Flushers to call, for the next dispatch.
func (h *Hub) dispatch(ctx context.Context, m *redis.Message, flush []Flusher) []Flusher {
	h.received.Inc()
	chatID, ok := h.chatOf(m.Channel)
	var env fanout.Envelope
	if !ok || json.Unmarshal([]byte(m.Payload), &env) != nil || len(env.Event) == 0 || env.ChatID != chatID {
		h.dropped.Inc()
		h.log.Warn("malformed fanout event", "channel", m.Channel)
		return flush
	}
	ctx = telemetry.Propagator().Extract(ctx, propagation.MapCarrier(env.Trace))
	_, span := h.tracer.Start(ctx, "fanout deliver", trace.WithSpanKind(trace.SpanKindConsumer))
	defer span.End()
	h.mu.RLock()
	n := 0
	if env.Ephemeral {
		for s := range h.chats[chatID] {
			if s.UserID() != env.SenderID {
				s.DeliverEphemeral(chatID, env.Event)
				n++
			}
		}
		h.mu.RUnlock()
		h.delivered.Add(float64(n))
		span.SetAttributes(attribute.Int64("chat.id", chatID), attribute.Int("fanout.recipients", n))
		return flush
	}
	for s := range h.chats[chatID] {
		// A stored message published again for its retrying sender
		// goes to the sender only: nobody else sees it twice.
		if env.Duplicate && s.UserID() != env.SenderID {
			continue
		}
		s.DeliverMessage(env.ChatID, env.Seq, env.Duplicate, env.Event)
		if f, ok := s.(Flusher); ok {
			flush = append(flush, f)
		}
		n++
	}
	h.mu.RUnlock()
	flushAll(flush)
	clear(flush)
	h.delivered.Add(float64(n))
	if env.AcceptedAt > 0 && !env.Duplicate {
		// The time was taken on the chat service's host, whose clock
		// may be ahead of this one's: never below 0, and counted.
		d := time.Since(time.UnixMicro(env.AcceptedAt))
		if d < 0 {
			h.clamped.Inc()
			d = 0
		}
		h.latency.Observe(d.Seconds())
	}
	span.SetAttributes(attribute.Int64("chat.id", chatID), attribute.Int("fanout.recipients", n))
	return flush
}

// PublishEphemeral sends an event that is not part of the chat's history
// (a typing indicator) from sender to the other members' connections on
// every gateway, through the chat's channel. Nothing stores it; like all
// pub/sub it may be lost.
func (h *Hub) PublishEphemeral(ctx context.Context, chatID, senderID int64, event []byte) error {
	env := fanout.Envelope{ChatID: chatID, SenderID: senderID, Ephemeral: true, Event: event, Trace: map[string]string{}}
	telemetry.Propagator().Inject(ctx, propagation.MapCarrier(env.Trace))
	b, err := json.Marshal(env)
	if err != nil {
		return fmt.Errorf("encode ephemeral event: %w", err)
	}
	if err := h.rdb.Publish(ctx, fanout.Channel(h.prefix, chatID), b).Err(); err != nil {
		return fmt.Errorf("publish ephemeral event of chat %d: %w", chatID, err)
	}
	return nil
}

func (h *Hub) chatOf(channel string) (int64, bool) {
	rest, ok := strings.CutPrefix(channel, strings.TrimSuffix(fanout.Channel(h.prefix, 0), "0"))
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseInt(rest, 10, 64)
	return id, err == nil
}

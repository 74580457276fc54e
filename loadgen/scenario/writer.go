package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/fanout"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/loadgen/stamp"
)

// WriterConfig configures the writer scenario. Zero fields take the
// defaults given. Target needs the gateways (to create the chats), NATS,
// PostgreSQL and Redis.
type WriterConfig struct {
	Target
	// Chats is the number of chats the messages go to, round-robin (100).
	Chats int
	// Backlog is the number of messages put into the stream while the
	// history writer is paused (200000); 0 after defaults is not possible,
	// a negative value skips the backlog phase.
	Backlog int
	// Rate and Duration shape the latency phase: messages a second, open
	// loop (5000), for how long (20s); a negative Rate skips it.
	Rate     float64
	Duration time.Duration
	// Timeout bounds the wait for the writer to store everything (2m).
	Timeout time.Duration
	// Setup is how many logins and chat creations run at once (32).
	Setup int
	// UserPrefix starts every username ("lg_u"); Password is theirs.
	UserPrefix, Password string
	RunID                string
	Log                  io.Writer
	// TokenFile keeps the users' tokens between runs ("": none).
	TokenFile string
}

func (c *WriterConfig) defaults() {
	setDefault(&c.Chats, 100)
	setDefault(&c.Backlog, 200_000)
	setDefault(&c.Rate, 5000)
	setDefault(&c.Duration, 20*time.Second)
	setDefault(&c.Timeout, 2*time.Minute)
	setDefault(&c.Setup, 32)
	setDefault(&c.UserPrefix, "lg_u")
	setDefault(&c.Password, "loadgen-password")
	setDefault(&c.RunID, newRunID())
	setDefault(&c.Log, io.Discard)
}

// WriterReport holds the figures of a writer run.
type WriterReport struct {
	Scenario string `json:"scenario"`
	Chats    int    `json:"chats"`
	// Backlog phase: messages put into the stream while the writer was
	// paused, how long publishing them took, and how fast the writer
	// stored them once resumed.
	Backlog            int     `json:"backlog_messages"`
	BacklogPublishSec  float64 `json:"backlog_publish_seconds"`
	BacklogStored      int64   `json:"backlog_stored"`
	BacklogDrainSec    float64 `json:"backlog_drain_seconds"`
	BacklogStoredPerS  float64 `json:"backlog_stored_per_second"`
	BacklogLost        int64   `json:"backlog_lost"`
	BacklogDuplicated  int64   `json:"backlog_duplicated"`
	BacklogPublishErrs int64   `json:"backlog_publish_errors"`
	// Latency phase: messages published open loop at Rate for Duration;
	// latency from the stream's acknowledgement (acceptance) to the
	// writer's fanout publish of the stored message, which follows its
	// commit.
	Rate          float64 `json:"rate_per_second"`
	DurationSec   float64 `json:"duration_seconds"`
	Published     int64   `json:"published"`
	Acked         int64   `json:"acked"`
	PublishErrs   int64   `json:"publish_errors"`
	Stored        int64   `json:"stored"`
	FannedOut     int64   `json:"fanned_out"`
	Lost          int64   `json:"lost"`
	Duplicated    int64   `json:"duplicated"`
	CommitLatency Latency `json:"accept_to_commit_latency"`
	// PublishError is one of the publish errors, if any (both phases).
	PublishError string    `json:"publish_error,omitempty"`
	Processes    []Process `json:"processes"`
}

// writerRun is the state of one writer run.
type writerRun struct {
	cfg      WriterConfig
	firstErr atomic.Pointer[string]
	js       jetstream.JetStream
	subj     subjects.Subjects
	pool     *pgxpool.Pool
	chats    []protocol.Chat
	senders  []protocol.Member
}

// RunWriter runs the writer scenario: a backlog drained by the history
// writer, then a constant rate measured from acceptance to commit.
func RunWriter(ctx context.Context, cfg WriterConfig) (*WriterReport, error) {
	cfg.defaults()
	if cfg.NATS == "" || cfg.Postgres == "" || cfg.Redis == "" {
		return nil, errors.New("writer: the NATS, PostgreSQL and Redis URLs are needed (a stack file has them)")
	}
	r := &writerRun{cfg: cfg}
	var err error
	if r.subj, err = subjects.New(cfg.subjectPrefix()); err != nil {
		return nil, err
	}
	nc, err := nats.Connect(cfg.NATS, nats.Name("loadgen"))
	if err != nil {
		return nil, fmt.Errorf("writer: %w", err)
	}
	defer nc.Close()
	if r.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096)); err != nil {
		return nil, fmt.Errorf("writer: %w", err)
	}
	if r.pool, err = pgxpool.New(ctx, cfg.Postgres); err != nil {
		return nil, fmt.Errorf("writer: %w", err)
	}
	defer r.pool.Close()
	if err := r.setup(ctx); err != nil {
		return nil, err
	}
	rep := &WriterReport{Scenario: "writer", Chats: cfg.Chats, Rate: max(cfg.Rate, 0), DurationSec: cfg.Duration.Seconds()}
	before := snapshot(cfg.Pids)
	if cfg.Backlog > 0 {
		if err := r.backlog(ctx, rep); err != nil {
			return nil, err
		}
	}
	if cfg.Rate > 0 {
		if err := r.latency(ctx, rep); err != nil {
			return nil, err
		}
	}
	rep.Processes = processes(cfg.Pids, before, snapshot(cfg.Pids))
	if e := r.firstErr.Load(); e != nil {
		rep.PublishError = *e
	}
	return rep, nil
}

// setup creates the run's chats, each by one user with one other member;
// the creator is the chat's sender.
func (r *writerRun) setup(ctx context.Context) error {
	cfg := r.cfg
	a := newAPI(cfg.Gateways)
	fmt.Fprintf(cfg.Log, "writer: creating %d chats ...\n", cfg.Chats)
	names, tokens, err := a.setupUsers(ctx, cfg.TokenFile, cfg.UserPrefix, cfg.Password, 2*cfg.Chats, cfg.Setup)
	if err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	r.chats = make([]protocol.Chat, cfg.Chats)
	r.senders = make([]protocol.Member, cfg.Chats)
	return parallel(ctx, cfg.Chats, cfg.Setup, func(ctx context.Context, c int) error {
		ch, err := a.createChatFull(ctx, c, tokens[2*c], fmt.Sprintf("lg-w-%s-%d", cfg.RunID, c), names[2*c+1:2*c+2])
		if err != nil {
			return fmt.Errorf("writer: chat: %w", err)
		}
		r.chats[c] = ch
		for _, m := range ch.Members {
			if m.Username == names[2*c] {
				r.senders[c] = m
			}
		}
		if r.senders[c].ID == 0 {
			return fmt.Errorf("writer: chat %d: its creator is not among its members", ch.ID)
		}
		return nil
	})
}

// chatIDs returns the run's chat ids.
func (r *writerRun) chatIDs() []int64 {
	ids := make([]int64, len(r.chats))
	for i, c := range r.chats {
		ids[i] = c.ID
	}
	return ids
}

// stored counts the messages of this run stored in PostgreSQL whose client
// message id starts with prefix, and the distinct such ids.
func (r *writerRun) stored(ctx context.Context, prefix string) (rows, distinct int64, err error) {
	err = r.pool.QueryRow(ctx, `
		SELECT count(*), count(DISTINCT client_msg_id) FROM messages
		WHERE chat_id = ANY($1) AND starts_with(client_msg_id, $2)`, r.chatIDs(), prefix).Scan(&rows, &distinct)
	if err != nil {
		return 0, 0, fmt.Errorf("writer: count stored messages: %w", err)
	}
	return rows, distinct, nil
}

// lastSeqs sums the chats' counters: the messages the writer has numbered.
func (r *writerRun) lastSeqs(ctx context.Context) (int64, error) {
	var n int64
	err := r.pool.QueryRow(ctx, `SELECT coalesce(sum(last_seq), 0)::bigint FROM chat_counters WHERE chat_id = ANY($1)`, r.chatIDs()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("writer: read chat counters: %w", err)
	}
	return n, nil
}

// publish publishes message i of the run (client message id prefix+i) as
// the chat service does: to the chat's subject of the message stream, with
// the stream message id of chat, sender and client message id, and the
// same body type. It returns the future of its acknowledgement.
func (r *writerRun) publish(prefix string, i int64, text []byte) (jetstream.PubAckFuture, error) {
	c := int(i % int64(len(r.chats)))
	clientID := prefix + strconv.FormatInt(i, 10)
	data, err := json.Marshal(busapi.StreamMessage{
		ChatID: r.chats[c].ID, SenderID: r.senders[c].ID, Sender: r.senders[c].Username,
		ClientMsgID: clientID, Text: string(text), AcceptedAt: time.Now().UTC(),
	})
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(r.subj.Message(r.chats[c].ID))
	msg.Data = data
	// With 4,096 awaiting their ack, the next publish waits (up to a
	// minute) rather than fail.
	return r.js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute), jetstream.WithMsgID(
		strconv.FormatInt(r.chats[c].ID, 10)+":"+strconv.FormatInt(r.senders[c].ID, 10)+":"+clientID))
}

// noteErr keeps the first publish error for the report.
func (r *writerRun) noteErr(err error) {
	s := err.Error()
	r.firstErr.CompareAndSwap(nil, &s)
}

// backlog pauses the writer's consumer, publishes cfg.Backlog messages,
// resumes the consumer and measures how fast the writer stores them.
func (r *writerRun) backlog(ctx context.Context, rep *WriterReport) error {
	cfg := r.cfg
	stream, consumer := r.subj.MessagesStream(), r.subj.HistoryWriterConsumer()
	// The pause lapses by itself should the load generator die meanwhile.
	if _, err := r.js.PauseConsumer(ctx, stream, consumer, time.Now().Add(cfg.Timeout+5*time.Minute)); err != nil {
		return fmt.Errorf("writer: pause the history writer's consumer: %w", err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_, _ = r.js.ResumeConsumer(context.WithoutCancel(ctx), stream, consumer)
		}
	}()
	base, err := r.lastSeqs(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(cfg.Log, "writer: history writer paused; publishing a backlog of %d messages ...\n", cfg.Backlog)
	prefix := "lg-" + cfg.RunID + "-b-"
	start := time.Now()
	var errs atomic.Int64
	futures := make(chan jetstream.PubAckFuture, 8192)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				r.noteErr(err)
				errs.Add(1)
			}
		}
	}()
	text := []byte("writer backlog message")
	for i := range int64(cfg.Backlog) {
		if ctx.Err() != nil {
			break
		}
		f, err := r.publish(prefix, i, text)
		if err != nil {
			r.noteErr(err)
			errs.Add(1)
			continue
		}
		futures <- f
	}
	close(futures)
	<-done
	rep.Backlog = cfg.Backlog
	rep.BacklogPublishSec = time.Since(start).Seconds()
	rep.BacklogPublishErrs = errs.Load()
	want := base + int64(cfg.Backlog) - errs.Load()
	fmt.Fprintf(cfg.Log, "writer: published in %.1f s; resuming the history writer ...\n", rep.BacklogPublishSec)

	if _, err := r.js.ResumeConsumer(ctx, stream, consumer); err != nil {
		return fmt.Errorf("writer: resume the history writer's consumer: %w", err)
	}
	resumed = true
	t0 := time.Now()
	deadline := t0.Add(cfg.Timeout)
	var n int64
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if n, err = r.lastSeqs(ctx); err != nil {
			return err
		}
		if n >= want {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	rep.BacklogDrainSec = time.Since(t0).Seconds()
	rows, distinct, err := r.stored(ctx, prefix)
	if err != nil {
		return err
	}
	rep.BacklogStored = distinct
	rep.BacklogStoredPerS = float64(n-base) / rep.BacklogDrainSec
	rep.BacklogLost = int64(cfg.Backlog) - errs.Load() - distinct
	rep.BacklogDuplicated = rows - distinct
	return nil
}

// latency publishes at cfg.Rate for cfg.Duration, open loop, and records
// for each message the time from the stream's acknowledgement to the
// writer's fanout publish (after its commit), received from Redis.
func (r *writerRun) latency(ctx context.Context, rep *WriterReport) error {
	cfg := r.cfg
	total := int64(cfg.Rate * cfg.Duration.Seconds())
	prefix := "lg-" + cfg.RunID + "-l-"
	ackAt := make([]atomic.Int64, total)
	recvAt := make([]atomic.Int64, total)
	var dups, fanned atomic.Int64

	opts, err := redis.ParseURL(cfg.Redis)
	if err != nil {
		return fmt.Errorf("writer: redis url: %w", err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	channels := make([]string, len(r.chats))
	for i, c := range r.chats {
		channels[i] = fanout.Channel(cfg.redisPrefix(), c.ID)
	}
	sub := rdb.Subscribe(ctx, channels...)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		return fmt.Errorf("writer: subscribe to fanout: %w", err)
	}
	idPrefix := []byte(`"` + prefix)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		var env struct {
			Event struct {
				ClientMsgID json.RawMessage `json:"client_msg_id"`
			} `json:"event"`
			Duplicate bool `json:"duplicate"`
		}
		for m := range sub.Channel(redis.WithChannelSize(65536)) {
			now := time.Now().UnixNano()
			env.Event.ClientMsgID, env.Duplicate = env.Event.ClientMsgID[:0], false
			if json.Unmarshal([]byte(m.Payload), &env) != nil {
				continue
			}
			i := sendIndex(env.Event.ClientMsgID, idPrefix[1:])
			if i < 0 || i >= total {
				continue
			}
			fanned.Add(1)
			if env.Duplicate || !recvAt[i].CompareAndSwap(0, now) {
				dups.Add(1)
			}
		}
	}()

	base, err := r.lastSeqs(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(cfg.Log, "writer: publishing %.0f/s for %s ...\n", cfg.Rate, cfg.Duration)
	type pending struct {
		i int64
		f jetstream.PubAckFuture
	}
	futures := make(chan pending, 65536)
	ackDone := make(chan struct{})
	var acked, errs atomic.Int64
	go func() {
		defer close(ackDone)
		for p := range futures {
			select {
			case <-p.f.Ok():
				ackAt[p.i].Store(time.Now().UnixNano())
				acked.Add(1)
			case err := <-p.f.Err():
				r.noteErr(err)
				errs.Add(1)
			}
		}
	}()
	interval := float64(time.Second) / cfg.Rate
	start := time.Now().Add(10 * time.Millisecond)
	var text []byte
	var i int64
	for ; i < total && ctx.Err() == nil; i++ {
		intended := start.Add(time.Duration(float64(i) * interval))
		if wait := time.Until(intended); wait > 0 {
			time.Sleep(wait)
		}
		text = stamp.Append(text[:0], intended.UnixNano())
		f, err := r.publish(prefix, i, text)
		if err != nil {
			r.noteErr(err)
			errs.Add(1)
			continue
		}
		futures <- pending{i, f}
	}
	close(futures)
	<-ackDone
	rep.Published, rep.Acked, rep.PublishErrs = i, acked.Load(), errs.Load()

	// Wait for the writer to store every acknowledged message and for its
	// fanout to arrive.
	deadline := time.Now().Add(cfg.Timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		n, err := r.lastSeqs(ctx)
		if err != nil {
			return err
		}
		if n-base >= rep.Acked && fanned.Load() >= rep.Acked {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = sub.Close()
	<-recvDone
	rows, distinct, err := r.stored(ctx, prefix)
	if err != nil {
		return err
	}
	rep.Stored, rep.FannedOut = distinct, fanned.Load()
	rep.Duplicated = rows - distinct + dups.Load()
	h := hdrhistogram.New(1, 60_000_000, 3)
	for k := range total {
		a, b := ackAt[k].Load(), recvAt[k].Load()
		if a == 0 {
			continue
		}
		if b == 0 {
			continue
		}
		_ = h.RecordValue(max((b-a)/1e3, 1))
	}
	rep.Lost = rep.Acked - distinct
	rep.CommitLatency = latencyOf(h)
	return nil
}

// latencyOf summarises a histogram of microseconds in milliseconds.
func latencyOf(h *hdrhistogram.Histogram) Latency {
	ms := func(us int64) float64 { return float64(us) / 1e3 }
	return Latency{P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max())}
}

// WriteTable writes the report as a table.
func (rep *WriterReport) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "scenario writer: %d chats\n", rep.Chats)
	row := func(k string, v any) { fmt.Fprintf(w, "  %-32s %v\n", k, v) }
	if rep.Backlog > 0 {
		row("backlog messages", rep.Backlog)
		row("backlog publish s", fmt.Sprintf("%.1f", rep.BacklogPublishSec))
		row("backlog publish errors", rep.BacklogPublishErrs)
		row("backlog stored", rep.BacklogStored)
		row("backlog drain s", fmt.Sprintf("%.2f", rep.BacklogDrainSec))
		row("backlog stored msgs/s", fmt.Sprintf("%.0f", rep.BacklogStoredPerS))
		row("backlog lost", rep.BacklogLost)
		row("backlog duplicated", rep.BacklogDuplicated)
	}
	if rep.Published > 0 {
		row("rate /s, duration s", fmt.Sprintf("%.0f, %.0f", rep.Rate, rep.DurationSec))
		row("published", rep.Published)
		row("acked", rep.Acked)
		row("publish errors", rep.PublishErrs)
		row("stored", rep.Stored)
		row("fanned out", rep.FannedOut)
		row("lost", rep.Lost)
		row("duplicated", rep.Duplicated)
		l := rep.CommitLatency
		row("accept->commit ms p50/p90/p99", fmt.Sprintf("%.2f / %.2f / %.2f", l.P50, l.P90, l.P99))
		row("accept->commit ms p99.9/max", fmt.Sprintf("%.2f / %.2f", l.P999, l.Max))
	}
	if rep.PublishError != "" {
		row("a publish error", rep.PublishError)
	}
	// CPU per stored message, both phases.
	writeProcessesPer(w, rep.Processes, rep.BacklogStored+rep.Stored, "message")
}

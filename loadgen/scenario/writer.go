package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
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
	"github.com/communications/communications/libs/streampub"
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
	// history writers stand by (200000); 0 after defaults is not possible,
	// a negative value skips the backlog phase.
	Backlog int
	// Rate and Duration shape the latency phase: messages a second, open
	// loop (5000), for how long (20s); a negative Rate skips it.
	Rate     float64
	Duration time.Duration
	// Ingress is how the latency phase puts messages into the stream:
	// IngressChat (the default) as the chat service accepts sends, or
	// IngressSingle.
	Ingress string
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

// The ways the writer scenario's latency phase publishes.
const (
	// IngressChat publishes as the chat service does (libs/streampub,
	// but with one batch in flight where the service has four): each
	// message waits for its acknowledgement, and the messages due
	// meanwhile go out together, from 16 on as one atomic batch that the
	// stream syncs to disk once.
	IngressChat = "chat"
	// IngressSingle publishes every message on its own, asynchronously
	// (one disk sync each), with up to 4,096 awaiting their ack.
	IngressSingle = "single"
)

func (c *WriterConfig) defaults() {
	setDefault(&c.Chats, 100)
	setDefault(&c.Backlog, 200_000)
	setDefault(&c.Rate, 5000)
	setDefault(&c.Duration, 20*time.Second)
	setDefault(&c.Ingress, IngressChat)
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
	// Backlog phase: messages put into the stream while the load
	// generator held the writers' lock, how long publishing them took, and
	// how fast the writer stored them once it took the lock back.
	Backlog           int     `json:"backlog_messages"`
	BacklogPublishSec float64 `json:"backlog_publish_seconds"`
	BacklogStored     int64   `json:"backlog_stored"`
	// BacklogStoredEarly counts what writers stored between the lock's
	// taking and its release (a writer may store a batch before it sees
	// the key change).
	BacklogStoredEarly int64   `json:"backlog_stored_before_release"`
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
	Ingress       string  `json:"ingress"`
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
	nc       *nats.Conn
	js       jetstream.JetStream
	subj     subjects.Subjects
	pool     *pgxpool.Pool
	chats    []protocol.Chat
	senders  []protocol.Member
	retire   []runChat // the chats, for retireChats
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
	r.nc = nc
	if r.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096)); err != nil {
		return nil, fmt.Errorf("writer: %w", err)
	}
	if r.pool, err = pgxpool.New(ctx, cfg.Postgres); err != nil {
		return nil, fmt.Errorf("writer: %w", err)
	}
	defer r.pool.Close()
	if cfg.Ingress != IngressChat && cfg.Ingress != IngressSingle {
		return nil, fmt.Errorf("writer: ingress %q: want %s or %s", cfg.Ingress, IngressChat, IngressSingle)
	}
	// Registered before the set-up, so one that fails half way retires
	// the chats it made.
	defer func() { newAPI(cfg.Gateways).retireChats(ctx, cfg.Log, cfg.Setup, r.retire) }()
	if err := r.setup(ctx); err != nil {
		return nil, err
	}
	rep := &WriterReport{Scenario: "writer", Chats: cfg.Chats, Rate: max(cfg.Rate, 0), Ingress: cfg.Ingress, DurationSec: cfg.Duration.Seconds()}
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
	r.retire = make([]runChat, cfg.Chats)
	return parallel(ctx, cfg.Chats, cfg.Setup, func(ctx context.Context, c int) error {
		ch, err := a.createChatFull(ctx, c, tokens[2*c], fmt.Sprintf("lg-w-%s-%d", cfg.RunID, c), names[2*c+1:2*c+2])
		r.retire[c] = runChat{id: ch.ID, token: tokens[2*c], members: names[2*c+1 : 2*c+2]}
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
func (r *writerRun) message(prefix string, i int64, text []byte) (*nats.Msg, error) {
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
	msg.Header.Set(jetstream.MsgIDHeader, strconv.FormatInt(r.chats[c].ID, 10)+":"+strconv.FormatInt(r.senders[c].ID, 10)+":"+clientID)
	return msg, nil
}

// publish publishes message i on its own, asynchronously. With 4,096
// awaiting their ack, the next publish waits (up to a minute) rather than
// fail.
func (r *writerRun) publish(prefix string, i int64, text []byte) (jetstream.PubAckFuture, error) {
	msg, err := r.message(prefix, i, text)
	if err != nil {
		return nil, err
	}
	return r.js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute))
}

// noteErr keeps the first publish error for the report.
func (r *writerRun) noteErr(err error) {
	s := err.Error()
	r.firstErr.CompareAndSwap(nil, &s)
}

// backlog holds the history writers' lock (so every writer stands by),
// publishes cfg.Backlog messages, releases the lock and measures how fast
// the writer that takes it stores them.
func (r *writerRun) backlog(ctx context.Context, rep *WriterReport) error {
	cfg := r.cfg
	hold, err := holdWriterLock(ctx, r.js, r.subj.HistoryWriterLock(), "loadgen-"+cfg.RunID)
	if err != nil {
		return err
	}
	defer hold.release()
	base, err := r.lastSeqs(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(cfg.Log, "writer: holding the history writers' lock; publishing a backlog of %d messages ...\n", cfg.Backlog)
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
	fmt.Fprintf(cfg.Log, "writer: published in %.1f s; releasing the history writers' lock ...\n", rep.BacklogPublishSec)
	want := base + int64(cfg.Backlog) - errs.Load()
	// The rate counts from here (a writer may have stored a few before it
	// saw the lock taken).
	atRelease, err := r.lastSeqs(ctx)
	if err != nil {
		return err
	}
	rep.BacklogStoredEarly = atRelease - base
	if err := hold.release(); err != nil {
		return err
	}
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
	rep.BacklogStoredPerS = float64(n-atRelease) / rep.BacklogDrainSec
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
	var acked, errs atomic.Int64
	var publishing sync.WaitGroup
	fail := func(err error) {
		r.noteErr(err)
		errs.Add(1)
	}
	ok := func(i int64) {
		ackAt[i].Store(time.Now().UnixNano())
		acked.Add(1)
	}
	var publish func(i int64, text []byte)
	switch cfg.Ingress {
	case IngressChat:
		// As the chat service accepts sends: each message waits for its
		// acknowledgement, and those arriving meanwhile go out together.
		pub, err := streampub.New(r.nc, streampub.Config{Timeout: 30 * time.Second})
		if err != nil {
			return err
		}
		publish = func(i int64, text []byte) {
			msg, err := r.message(prefix, i, text)
			if err != nil {
				fail(err)
				return
			}
			publishing.Go(func() {
				if _, err := pub.Publish(ctx, msg); err != nil {
					fail(err)
					return
				}
				ok(i)
			})
		}
	default:
		publish = func(i int64, text []byte) {
			f, err := r.publish(prefix, i, text)
			if err != nil {
				fail(err)
				return
			}
			publishing.Go(func() {
				select {
				case <-f.Ok():
					ok(i)
				case err := <-f.Err():
					fail(err)
				}
			})
		}
	}
	i, _ := openLoop(ctx, cfg.Rate, total, func(i int64, intended time.Time) {
		publish(i, stamp.Append(nil, intended.UnixNano()))
	})
	publishing.Wait()
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
		row("backlog stored before release", rep.BacklogStoredEarly)
		row("backlog drain s", fmt.Sprintf("%.2f", rep.BacklogDrainSec))
		row("backlog stored msgs/s", fmt.Sprintf("%.0f", rep.BacklogStoredPerS))
		row("backlog lost", rep.BacklogLost)
		row("backlog duplicated", rep.BacklogDuplicated)
	}
	if rep.Published > 0 {
		row("rate /s, duration s", fmt.Sprintf("%.0f, %.0f", rep.Rate, rep.DurationSec))
		row("ingress", rep.Ingress)
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

// writerLock is the history writers' lock held by the load generator. The
// renewing goroutine owns rev and lost until done is closed; release,
// called from the scenario's goroutine, reads them after that.
type writerLock struct {
	kv     jetstream.KeyValue
	cancel context.CancelFunc
	done   chan struct{}
	rev    uint64
	lost   error // why the lock was lost while held
	closed bool
}

// holdWriterLock takes the history writers' lock from whoever holds it
// (the writer holding it stops storing when it sees the key change) and
// keeps it, renewing it at a third of the bucket's TTL, until release. The
// lock lapses by itself within the TTL should the load generator die.
func holdWriterLock(ctx context.Context, js jetstream.JetStream, bucket, id string) (*writerLock, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("writer: the history writers' lock bucket %s (is the history service running?): %w", bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("writer: lock bucket status: %w", err)
	}
	rev, err := kv.Put(ctx, subjects.HistoryWriterLockKey, []byte(id))
	if err != nil {
		return nil, fmt.Errorf("writer: take the history writers' lock: %w", err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &writerLock{kv: kv, cancel: cancel, done: make(chan struct{}), rev: rev}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(max(st.TTL()/3, 50*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-tick.C:
				next, err := kv.Update(rctx, subjects.HistoryWriterLockKey, []byte(id), l.rev)
				var apiErr *jetstream.APIError
				switch {
				case err == nil:
					l.rev = next
				case errors.As(err, &apiErr):
					// The key changed or lapsed: a writer may be
					// storing the backlog already.
					l.lost = err
				}
				if l.lost != nil {
					return
				}
			}
		}
	}()
	return l, nil
}

// release stops the renewals and deletes the lock key, so that a writer
// takes it at once. Only the first call does anything.
func (l *writerLock) release() error {
	l.cancel()
	<-l.done
	if l.closed {
		return nil
	}
	l.closed = true
	if l.lost != nil {
		return fmt.Errorf("writer: the history writers' lock lapsed while held (%w): the backlog figures are not valid", l.lost)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.kv.Delete(ctx, subjects.HistoryWriterLockKey, jetstream.LastRevision(l.rev)); err != nil {
		return fmt.Errorf("writer: release the history writers' lock: %w", err)
	}
	return nil
}

// Package streampub publishes to a JetStream stream with file storage and a
// disk sync per write, batching concurrent publishes: the chat service
// accepts messages with it, and the load generator puts messages into the
// message stream the same way (with one batch in flight where the chat
// service has four).
package streampub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Config shapes a Publisher. Zero fields take the defaults given.
type Config struct {
	// MaxBatch is the most messages published together. Default 100;
	// at most 1000 (nats-server's limit for an atomic batch).
	MaxBatch int
	// AtomicMin is the fewest messages published as one atomic batch;
	// fewer are published one by one, pipelined. nats-server stages an
	// atomic batch in a store of its own, which costs about as much as
	// several fsyncs. Default 16.
	AtomicMin int
	// Timeout bounds the publish of one batch. Default 5s.
	Timeout time.Duration
	// InFlight is the most batches published at once: a batch goes out
	// while up to InFlight-1 others wait for their acknowledgements.
	// Default 1.
	InFlight int
}

// Publisher publishes messages to a stream that allows atomic batches.
//
// Publishes that arrive while Config.InFlight batches are in flight are
// published together: pipelined (every message sent, then every
// acknowledgement awaited), and from Config.AtomicMin messages on as one
// atomic batch (ADR-50: Nats-Batch-Id, Nats-Batch-Sequence, and
// Nats-Batch-Commit on the last), which nats-server stores with one fsync
// and acknowledges once, after the fsync. Batches are taken from the queue
// in arrival order; with more than one in flight, messages of different
// batches may be stored in either order, so only a caller that waits for
// each message before its next keeps its order (the chat service's callers
// do: one connection's sends are accepted one after the other). An atomic
// batch the stream refuses as a whole (one of its message ids is a
// duplicate, say) is published again one message at a time, which tells
// each message apart.
type Publisher struct {
	js        jetstream.JetStream
	nc        *nats.Conn
	maxBatch  int
	atomicMin int
	timeout   time.Duration
	inFlight  int

	mu      sync.Mutex
	queue   []*pending
	running int  // goroutines publishing the queue, at most inFlight
	paused  bool // Pause holds the queue
}

// pending is one message waiting for its publish.
type pending struct {
	msg   *nats.Msg
	dup   bool
	err   error
	done  chan struct{}
	taken bool // cut into a batch (under Publisher.mu)
}

// New returns a Publisher on nc.
func New(nc *nats.Conn, cfg Config) (*Publisher, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(cfg.Timeout))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 100
	}
	cfg.MaxBatch = min(cfg.MaxBatch, 1000)
	if cfg.AtomicMin <= 1 {
		cfg.AtomicMin = 16
	}
	cfg.InFlight = max(cfg.InFlight, 1)
	return &Publisher{js: js, nc: nc, maxBatch: cfg.MaxBatch, atomicMin: cfg.AtomicMin, timeout: cfg.Timeout, inFlight: cfg.InFlight}, nil
}

// Publish publishes msg and waits for the stream's acknowledgement. It
// reports whether the stream already had msg's Nats-Msg-Id (a retry within
// its duplicate window). msg must not be used by the caller afterwards
// (batching sets headers on it).
func (s *Publisher) Publish(ctx context.Context, msg *nats.Msg) (bool, error) {
	p := &pending{msg: msg, done: make(chan struct{})}
	s.mu.Lock()
	s.queue = append(s.queue, p)
	lead := !s.paused && s.running < s.inFlight
	if lead {
		s.running++
	}
	s.mu.Unlock()
	if lead {
		s.run(p)
	}
	return s.wait(ctx, p)
}

// wait returns p's outcome once it is published, or when ctx ends first.
// An outcome already known wins over an ended ctx, so a stored message is
// never reported as failed because its caller's deadline passed meanwhile.
// A message still in the queue when its caller gives up is taken out of it
// and never sent: its sender retries, and a later message of the sender
// cannot be stored before it from a batch in flight beside.
func (s *Publisher) wait(ctx context.Context, p *pending) (bool, error) {
	select {
	case <-p.done:
		return p.outcome()
	case <-ctx.Done():
		if isDone(p) {
			return p.outcome()
		}
		s.mu.Lock()
		if i := slices.Index(s.queue, p); i >= 0 {
			s.queue = slices.Delete(s.queue, i, i+1)
			s.mu.Unlock()
			return false, fmt.Errorf("publish to stream: not sent: %w", ctx.Err())
		}
		s.mu.Unlock()
		// The message may still be stored: the client retries with the
		// same id, which the stream and the writer de-duplicate.
		return false, fmt.Errorf("publish to stream: %w", ctx.Err())
	}
}

func (p *pending) outcome() (bool, error) {
	if p.err != nil {
		return false, fmt.Errorf("publish to stream: %w", p.err)
	}
	return p.dup, nil
}

// Pause holds every publish in the queue until resume is called, which
// publishes what was queued, batch by batch in order (on the caller's
// goroutine, unless publishes that come meanwhile take part of it), and
// lets publishing go on as before. It reports false (and no resume) when
// a publish is in flight or queued. Tests use it to build a batch of known
// content.
func (s *Publisher) Pause() (resume func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.paused || s.running > 0 || len(s.queue) > 0 {
		return nil, false
	}
	s.paused = true
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.paused = false
			s.running++
			s.mu.Unlock()
			s.run(nil)
		})
	}, true
}

// Queued returns how many messages wait for their publish, and whether a
// publish is in flight (or publishing is paused).
func (s *Publisher) Queued() (n int, busy bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue), s.paused || s.running > 0
}

// run publishes the queue batch by batch until own has left it (in a
// batch of its own or of another runner's), then hands the rest of the
// queue to a goroutine of its own, so that no caller waits for others'
// batches after its own.
func (s *Publisher) run(own *pending) {
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.running--
			s.mu.Unlock()
			return
		}
		if own != nil && own.taken {
			s.mu.Unlock()
			go s.run(nil)
			return
		}
		n := min(len(s.queue), s.maxBatch)
		batch := s.queue[:n:n]
		s.queue = s.queue[n:]
		for _, p := range batch {
			p.taken = true
		}
		s.mu.Unlock()
		s.publish(batch)
	}
}

// errNotPublished is the outcome of a message whose publish did not get
// as far as an answer.
var errNotPublished = errors.New("not published")

func isDone(p *pending) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// publish publishes batch and sets each message's outcome.
func (s *Publisher) publish(batch []*pending) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	// Every message counts as not published until its ack says otherwise,
	// so nothing unstored is ever answered "accepted", even if publishing
	// stops half way.
	for _, p := range batch {
		p.err = errNotPublished
	}
	defer func() {
		for _, p := range batch {
			close(p.done)
		}
	}()
	if len(batch) >= s.atomicMin {
		err := s.publishAtomic(ctx, batch)
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) {
			// Stored (nil), or no answer: the outcome is unknown and
			// the senders retry.
			for _, p := range batch {
				p.err = err
			}
			return
		}
		// Refused as a whole, nothing of it stored: one by one.
		for _, p := range batch {
			for _, h := range []string{BatchIDHeader, batchSeqHeader, batchCommitHeader} {
				p.msg.Header.Del(h)
			}
		}
	}
	// One publish per message, all sent before the first acknowledgement
	// is awaited; the stream stores them in this order.
	futures := make([]jetstream.PubAckFuture, len(batch))
	for i, p := range batch {
		futures[i], p.err = s.js.PublishMsgAsync(p.msg)
	}
	for i, p := range batch {
		if futures[i] == nil {
			continue
		}
		select {
		case ack := <-futures[i].Ok():
			p.dup = ack.Duplicate
		case p.err = <-futures[i].Err():
		case <-ctx.Done():
			p.err = ctx.Err()
		}
	}
}

// The headers of an atomic batch publish (nats-server 2.12 and later).
const (
	// BatchIDHeader names the atomic batch a stored message came in.
	BatchIDHeader     = "Nats-Batch-Id"
	batchSeqHeader    = "Nats-Batch-Sequence"
	batchCommitHeader = "Nats-Batch-Commit"
)

// publishAtomic publishes batch as one atomic batch: every message or none
// is stored. It returns a *jetstream.APIError when the stream refused it.
func (s *Publisher) publishAtomic(ctx context.Context, batch []*pending) error {
	id := nuid.Next()
	last := len(batch) - 1
	for i, p := range batch {
		p.msg.Header.Set(BatchIDHeader, id)
		p.msg.Header.Set(batchSeqHeader, strconv.Itoa(i+1))
		if i < last {
			if err := s.nc.PublishMsg(p.msg); err != nil {
				return err
			}
		}
	}
	commit := batch[last].msg
	commit.Header.Set(batchCommitHeader, "1")
	reply, err := s.nc.RequestMsgWithContext(ctx, commit)
	if err != nil {
		return err
	}
	var ack struct {
		Error     *jetstream.APIError `json:"error"`
		Stream    string              `json:"stream"`
		BatchSize int                 `json:"count"`
	}
	if err := json.Unmarshal(reply.Data, &ack); err != nil {
		return fmt.Errorf("decode batch ack: %w", err)
	}
	switch {
	case ack.Error != nil:
		return ack.Error
	case ack.Stream == "" || ack.BatchSize != len(batch):
		return fmt.Errorf("batch ack for %d messages of %d: %s", ack.BatchSize, len(batch), reply.Data)
	}
	return nil
}

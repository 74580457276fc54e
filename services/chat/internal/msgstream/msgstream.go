// Package msgstream declares the JetStream stream of accepted messages,
// which the chat service owns, and publishes to it. A message is accepted
// once the stream has acknowledged it: it is then on disk (file storage,
// fsync per write in every shipped server configuration) and the history
// writer will store it.
package msgstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/services/chat/internal/chats"
)

// Config shapes the stream. Zero fields take the defaults given.
type Config struct {
	// Replicas is the number of stream replicas (1 for one server, 3 for a
	// three-node cluster). Default 1.
	Replicas int
	// MaxBytes bounds the stream: when the history writer falls this far
	// behind, sends are refused (never silently dropped). Default 1 GiB.
	MaxBytes int64
	// DuplicateWindow is how long the stream itself drops a repeated
	// message id. The history writer's unique key holds beyond it.
	// Default 2 minutes.
	DuplicateWindow time.Duration
	// MaxBatch is the most messages published together. Default 100
	// (nats-server allows 1000 in an atomic batch).
	MaxBatch int
	// AtomicMin is the fewest messages published as one atomic batch;
	// fewer are published one by one, pipelined. nats-server stages an
	// atomic batch in a store of its own, which costs about as much as
	// several fsyncs. Default 16.
	AtomicMin int
	// PublishTimeout bounds the publish of one batch. Default 5s.
	PublishTimeout time.Duration
}

// Stream publishes accepted messages.
//
// Sends that arrive while a publish is in flight are published together:
// pipelined (every message sent, then every acknowledgement awaited), and
// from Config.AtomicMin messages on as one atomic batch (ADR-50:
// Nats-Batch-Id, Nats-Batch-Sequence, and Nats-Batch-Commit on the last),
// which nats-server stores with one fsync and acknowledges once, after the
// fsync. Batches go out one at a time, in arrival order, so a sender's
// messages keep their order (a sender's next send arrives only after the
// previous one was answered). An atomic batch the stream refuses as a whole
// (one of its message ids is a duplicate, say) is published again one
// message at a time, which tells each message apart.
type Stream struct {
	js        jetstream.JetStream
	nc        *nats.Conn
	subj      subjects.Subjects
	maxBatch  int
	atomicMin int
	timeout   time.Duration

	mu    sync.Mutex
	queue []*pending
	busy  bool // a goroutine is publishing the queue
}

// pending is one message waiting for its publish.
type pending struct {
	msg  *nats.Msg
	dup  bool
	err  error
	done chan struct{}
}

// Ensure creates or updates the message stream and returns a publisher.
// The stream is a work queue: a message leaves it once the history writer
// has stored it and acknowledged it.
func Ensure(ctx context.Context, nc *nats.Conn, subj subjects.Subjects, cfg Config) (*Stream, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(publishTimeout(cfg)))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	sc := StreamConfig(subj, cfg)
	if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
		return nil, fmt.Errorf("declare stream %s: %w", sc.Name, err)
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 100
	}
	// nats-server refuses atomic batches of more than 1,000 messages.
	cfg.MaxBatch = min(cfg.MaxBatch, 1000)
	if cfg.AtomicMin <= 1 {
		cfg.AtomicMin = 16
	}
	cfg.PublishTimeout = publishTimeout(cfg)
	return &Stream{js: js, nc: nc, subj: subj, maxBatch: cfg.MaxBatch, atomicMin: cfg.AtomicMin, timeout: cfg.PublishTimeout}, nil
}

// publishTimeout is cfg's bound on the publish of one batch.
func publishTimeout(cfg Config) time.Duration {
	if cfg.PublishTimeout <= 0 {
		return 5 * time.Second
	}
	return cfg.PublishTimeout
}

// StreamConfig returns the configuration Ensure declares (for a new stream).
func StreamConfig(subj subjects.Subjects, cfg Config) jetstream.StreamConfig {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 1 << 30
	}
	if cfg.DuplicateWindow <= 0 {
		cfg.DuplicateWindow = 2 * time.Minute
	}
	return jetstream.StreamConfig{
		Name:        subj.MessagesStream(),
		Description: "Messages accepted by the chat service, waiting to be stored by the history writer.",
		Subjects:    []string{subj.MessagesAll()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxBytes:    cfg.MaxBytes,
		Discard:     jetstream.DiscardNew,
		Duplicates:  cfg.DuplicateWindow,
		// Concurrent sends are published as atomic batches.
		AllowAtomicPublish: true,
	}
}

// MsgID is the JetStream message id of a message: the same chat, sender and
// client message id always give the same id, so a retried publish is dropped
// by the stream.
func MsgID(chatID, senderID int64, clientMsgID string) string {
	return strconv.FormatInt(chatID, 10) + ":" + strconv.FormatInt(senderID, 10) + ":" + clientMsgID
}

// Publish publishes m (a message, an edit or a deletion) and waits for the
// stream's acknowledgement. It reports whether the stream already had m's
// message id (a retry within its duplicate window).
func (s *Stream) Publish(ctx context.Context, m chats.Message) (bool, error) {
	data, err := json.Marshal(busapi.StreamMessage{
		ChatID: m.ChatID, SenderID: m.SenderID, Sender: m.Sender,
		ClientMsgID: m.ClientMsgID, Text: m.Text, AcceptedAt: m.AcceptedAt,
		Kind: m.Kind, TargetSeq: m.TargetSeq,
	})
	if err != nil {
		return false, fmt.Errorf("encode stream message: %w", err)
	}
	msg := nats.NewMsg(s.subj.Message(m.ChatID))
	msg.Data = data
	natsbus.Inject(ctx, msg)
	msg.Header.Set(jetstream.MsgIDHeader, MsgID(m.ChatID, m.SenderID, m.ClientMsgID))
	p := &pending{msg: msg, done: make(chan struct{})}
	s.mu.Lock()
	s.queue = append(s.queue, p)
	lead := !s.busy
	s.busy = true
	s.mu.Unlock()
	if lead {
		s.run(p)
	}
	return p.wait(ctx)
}

// wait returns p's outcome once it is published, or when ctx ends first.
// An outcome already known wins over an ended ctx, so a stored message is
// never reported as failed because its caller's deadline passed meanwhile.
func (p *pending) wait(ctx context.Context) (bool, error) {
	select {
	case <-p.done:
		return p.outcome()
	case <-ctx.Done():
		if isDone(p) {
			return p.outcome()
		}
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

// run publishes the queue batch by batch until own is done, then hands the
// rest of the queue to a goroutine of its own, so that no caller waits for
// others' batches after its own.
func (s *Stream) run(own *pending) {
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.busy = false
			s.mu.Unlock()
			return
		}
		if own != nil && isDone(own) {
			s.mu.Unlock()
			go s.run(nil)
			return
		}
		n := min(len(s.queue), s.maxBatch)
		batch := s.queue[:n:n]
		s.queue = s.queue[n:]
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
func (s *Stream) publish(batch []*pending) {
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
			for _, h := range []string{batchIDHeader, batchSeqHeader, batchCommitHeader} {
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
	batchIDHeader     = "Nats-Batch-Id"
	batchSeqHeader    = "Nats-Batch-Sequence"
	batchCommitHeader = "Nats-Batch-Commit"
)

// publishAtomic publishes batch as one atomic batch: every message or none
// is stored. It returns a *jetstream.APIError when the stream refused it.
func (s *Stream) publishAtomic(ctx context.Context, batch []*pending) error {
	id := nuid.Next()
	last := len(batch) - 1
	for i, p := range batch {
		p.msg.Header.Set(batchIDHeader, id)
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

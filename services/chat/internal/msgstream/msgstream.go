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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/streampub"
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
	// PublishInFlight is the most batches published at once (a batch goes
	// out while others wait for their acknowledgements). Default 1; the
	// service's default is 4.
	PublishInFlight int
}

// Stream publishes accepted messages, concurrent sends batched together
// (libs/streampub): sends that arrive while Config.PublishInFlight
// publishes are in flight go out together, pipelined or from
// Config.AtomicMin on as one atomic batch that nats-server stores with one
// fsync, taken in arrival order. A sender's messages keep their order
// because a sender's next send arrives only after the previous one was
// answered.
type Stream struct {
	subj subjects.Subjects
	pub  *streampub.Publisher
}

// Ensure creates or updates the message stream and returns a publisher.
// The stream has limits retention: the history writer purges what it has
// stored (its position is kept in PostgreSQL), nobody acknowledges.
//
// A stream declared by an earlier version as a work queue cannot be
// switched to limits retention; Ensure replaces it when it is empty and
// otherwise refuses, so that no accepted message is dropped.
func Ensure(ctx context.Context, nc *nats.Conn, subj subjects.Subjects, cfg Config) (*Stream, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	sc := StreamConfig(subj, cfg)
	if err := replaceWorkQueue(ctx, js, sc.Name); err != nil {
		return nil, err
	}
	if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
		return nil, fmt.Errorf("declare stream %s: %w", sc.Name, err)
	}
	pub, err := streampub.New(nc, streampub.Config{MaxBatch: cfg.MaxBatch, AtomicMin: cfg.AtomicMin, Timeout: cfg.PublishTimeout,
		InFlight: cfg.PublishInFlight})
	if err != nil {
		return nil, err
	}
	return &Stream{subj: subj, pub: pub}, nil
}

// replaceWorkQueue deletes the stream name when it exists as an empty work
// queue (the retention of earlier versions), and returns an error when it
// exists as a work queue holding messages.
func replaceWorkQueue(ctx context.Context, js jetstream.JetStream, name string) error {
	st, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up stream %s: %w", name, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s info: %w", name, err)
	}
	if info.Config.Retention != jetstream.WorkQueuePolicy {
		return nil
	}
	if info.State.Msgs > 0 {
		return fmt.Errorf("stream %s is a work queue (an earlier version) still holding %d messages: "+
			"run the earlier history writer until it is empty, then start this version", name, info.State.Msgs)
	}
	// Checked again right before the deletion: still the same empty work
	// queue (a second replica may have replaced it meanwhile, or an old
	// one published). Chat replicas of earlier versions must be stopped
	// before this version starts (services/chat/README.md).
	again, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s info: %w", name, err)
	}
	if !again.Created.Equal(info.Created) || again.Config.Retention != jetstream.WorkQueuePolicy || again.State.Msgs > 0 || again.State.LastSeq != info.State.LastSeq {
		return fmt.Errorf("stream %s changed while being replaced; start again", name)
	}
	if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("replace empty work-queue stream %s: %w", name, err)
	}
	return nil
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
		Description: "Messages accepted by the chat service; the history writer stores them and purges what it stored.",
		Subjects:    []string{subj.MessagesAll()},
		Retention:   jetstream.LimitsPolicy,
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
	return s.pub.Publish(ctx, msg)
}

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
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
}

// Stream publishes accepted messages.
type Stream struct {
	js   jetstream.JetStream
	subj subjects.Subjects
}

// Ensure creates or updates the message stream and returns a publisher.
//
// The stream keeps its messages (limits retention) until the history writer,
// which has stored them, purges them up to its consumer's ack floor. A
// work-queue stream would drop each message as it is acknowledged, which
// costs nats-server a tombstone record and an fsync per message under
// sync_interval always, as much again as storing it. Nothing leaves the
// stream unstored either way: no age or count limit is set, and a full
// stream refuses new messages (discard new).
//
// A stream declared by an earlier version as a work queue (its retention
// cannot be changed in place) is kept as it is and logged: it works the same,
// at the higher cost, until an operator recreates it while it is empty.
func Ensure(ctx context.Context, nc *nats.Conn, subj subjects.Subjects, cfg Config, logger *slog.Logger) (*Stream, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	sc := StreamConfig(subj, cfg)
	if st, err := js.Stream(ctx, sc.Name); err == nil && st.CachedInfo().Config.Retention == jetstream.WorkQueuePolicy {
		logger.WarnContext(ctx, "the message stream is a work queue (declared by an earlier version); keeping it. "+
			"Each acknowledged message costs nats-server an fsync more: recreate the stream while it is empty to drop that cost",
			"stream", sc.Name)
		sc.Retention = jetstream.WorkQueuePolicy
	} else if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("look up stream %s: %w", sc.Name, err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
		return nil, fmt.Errorf("declare stream %s: %w", sc.Name, err)
	}
	return &Stream{js: js, subj: subj}, nil
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
		Description: "Messages accepted by the chat service, kept until the history writer has stored them.",
		Subjects:    []string{subj.MessagesAll()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxBytes:    cfg.MaxBytes,
		Discard:     jetstream.DiscardNew,
		Duplicates:  cfg.DuplicateWindow,
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
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(MsgID(m.ChatID, m.SenderID, m.ClientMsgID)))
	if err != nil {
		return false, fmt.Errorf("publish to stream: %w", err)
	}
	return ack.Duplicate, nil
}

// Package msgstream declares the JetStream stream of accepted messages,
// which the chat service owns, and publishes to it. A message is accepted
// once the stream has acknowledged it: it is then on disk (file storage,
// fsync per write in every shipped server configuration) and the history
// writer will store it.
package msgstream

import (
	"context"
	"encoding/json"
	"fmt"
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
// The stream is a work queue: a message leaves it once the history writer
// has stored it and acknowledged it.
func Ensure(ctx context.Context, nc *nats.Conn, subj subjects.Subjects, cfg Config) (*Stream, error) {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 1 << 30
	}
	if cfg.DuplicateWindow <= 0 {
		cfg.DuplicateWindow = 2 * time.Minute
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        subj.MessagesStream(),
		Description: "Messages accepted by the chat service, waiting to be stored by the history writer.",
		Subjects:    []string{subj.MessagesAll()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxBytes:    cfg.MaxBytes,
		Discard:     jetstream.DiscardNew,
		Duplicates:  cfg.DuplicateWindow,
	})
	if err != nil {
		return nil, fmt.Errorf("declare stream %s: %w", subj.MessagesStream(), err)
	}
	return &Stream{js: js, subj: subj}, nil
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

// Package streamtest gives the history service's tests the message stream:
// the chat service owns and declares it, so tests declare it themselves with
// the same configuration, and publish stream messages as the chat service
// does.
package streamtest

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
)

// Connect connects to url and returns a JetStream context; the connection
// is closed when the test ends.
func Connect(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// CreateStream declares the message stream as the chat service does
// (services/chat/internal/msgstream): limits retention on file storage.
func CreateStream(t testing.TB, js jetstream.JetStream, subj subjects.Subjects) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       subj.MessagesStream(),
		Subjects:   []string{subj.MessagesAll()},
		Retention:  jetstream.LimitsPolicy,
		Storage:    jetstream.FileStorage,
		Replicas:   1,
		MaxBytes:   1 << 30,
		Discard:    jetstream.DiscardNew,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
}

// MsgID is the Nats-Msg-Id the chat service gives a message.
func MsgID(m busapi.StreamMessage) string {
	return strconv.FormatInt(m.ChatID, 10) + ":" + strconv.FormatInt(m.SenderID, 10) + ":" + m.ClientMsgID
}

// Publish publishes m to its chat's stream subject with the trace context of
// ctx and the given Nats-Msg-Id (MsgID(m) as the chat service does; another
// id gets a repeated message past the stream's duplicate window, like a
// sender's late retry).
func Publish(ctx context.Context, t testing.TB, js jetstream.JetStream, subj subjects.Subjects, m busapi.StreamMessage, msgID string) {
	t.Helper()
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("encode stream message: %v", err)
	}
	PublishRaw(ctx, t, js, subj.Message(m.ChatID), data, msgID)
}

// PublishRaw publishes data to subject as it is.
func PublishRaw(ctx context.Context, t testing.TB, js jetstream.JetStream, subject string, data []byte, msgID string) {
	t.Helper()
	msg := nats.NewMsg(subject)
	msg.Data = data
	natsbus.Inject(ctx, msg)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(pctx, msg, jetstream.WithMsgID(msgID)); err != nil {
		t.Fatalf("publish to stream: %v", err)
	}
}

// Positioner reads the history writer's stored stream position.
type Positioner interface {
	StoredPosition(ctx context.Context, stream string) (uint64, bool, error)
}

// Drained reports whether the history writer has stored everything the
// message stream received: its stored position is the stream's last
// sequence.
func Drained(ctx context.Context, js jetstream.JetStream, subj subjects.Subjects, store Positioner) (bool, error) {
	st, err := js.Stream(ctx, subj.MessagesStream())
	if err != nil {
		return false, err
	}
	pos, ok, err := store.StoredPosition(ctx, subj.MessagesStream())
	if err != nil {
		return false, err
	}
	return ok && pos == st.CachedInfo().State.LastSeq, nil
}

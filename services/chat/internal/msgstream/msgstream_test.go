package msgstream

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/chat/internal/chats"
)

func TestPublish(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	// Declaring twice (a restart, a second replica) is harmless.
	var s *Stream
	for range 2 {
		if s, err = Ensure(ctx, nc, subj, Config{}, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, subj.MessagesStream())
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	if cfg.Storage != jetstream.FileStorage || cfg.Retention != jetstream.LimitsPolicy || cfg.Discard != jetstream.DiscardNew ||
		cfg.MaxAge != 0 || cfg.MaxMsgs != -1 || cfg.MaxMsgsPerSubject != -1 {
		t.Errorf("stream config storage=%v retention=%v discard=%v max age=%v max msgs=%d per subject=%d, want file, limits, discard new, no age or count limit",
			cfg.Storage, cfg.Retention, cfg.Discard, cfg.MaxAge, cfg.MaxMsgs, cfg.MaxMsgsPerSubject)
	}

	m := chats.Message{ChatID: 7, SenderID: 3, Sender: "carol", ClientMsgID: "c-1", Text: "hi", AcceptedAt: time.Unix(100, 0).UTC()}
	dup, err := s.Publish(ctx, m)
	if err != nil || dup {
		t.Fatalf("first publish: duplicate=%v err=%v", dup, err)
	}
	dup, err = s.Publish(ctx, m)
	if err != nil || !dup {
		t.Fatalf("retry: duplicate=%v err=%v, want a duplicate", dup, err)
	}
	other := m
	other.SenderID = 4 // another sender may use the same client id
	if dup, err := s.Publish(ctx, other); err != nil || dup {
		t.Fatalf("other sender: duplicate=%v err=%v", dup, err)
	}

	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("stream holds %d messages, want 2", info.State.Msgs)
	}
	raw, err := st.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Subject != subj.Message(7) {
		t.Errorf("subject = %s, want %s", raw.Subject, subj.Message(7))
	}
	if got := raw.Header.Get(jetstream.MsgIDHeader); got != "7:3:c-1" {
		t.Errorf("Nats-Msg-Id = %q, want 7:3:c-1", got)
	}
	var sm busapi.StreamMessage
	if err := json.Unmarshal(raw.Data, &sm); err != nil {
		t.Fatal(err)
	}
	want := busapi.StreamMessage{ChatID: 7, SenderID: 3, Sender: "carol", ClientMsgID: "c-1", Text: "hi", AcceptedAt: m.AcceptedAt}
	if sm != want {
		t.Errorf("payload = %+v, want %+v", sm, want)
	}
}

// A stream an earlier version declared as a work queue cannot change its
// retention: Ensure keeps it as it is, and publishing works.
func TestEnsureKeepsAWorkQueueStream(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	old := StreamConfig(subj, Config{})
	old.Retention = jetstream.WorkQueuePolicy
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	s, err := Ensure(ctx, nc, subj, Config{MaxBytes: 2 << 30}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("ensure over a work-queue stream: %v", err)
	}
	st, err := js.Stream(ctx, subj.MessagesStream())
	if err != nil {
		t.Fatal(err)
	}
	if cfg := st.CachedInfo().Config; cfg.Retention != jetstream.WorkQueuePolicy || cfg.MaxBytes != 2<<30 {
		t.Errorf("retention=%v max bytes=%d, want the work queue kept and its other settings updated", cfg.Retention, cfg.MaxBytes)
	}
	m := chats.Message{ChatID: 7, SenderID: 3, Sender: "carol", ClientMsgID: "c-1", Text: "hi", AcceptedAt: time.Unix(100, 0).UTC()}
	if dup, err := s.Publish(ctx, m); err != nil || dup {
		t.Fatalf("publish: duplicate=%v err=%v", dup, err)
	}
}

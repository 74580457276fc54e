package msgstream

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/streampub"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/chat/internal/chats"
)

func TestPublish(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	nc := testenv.NATSConn(t)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	// Declaring twice (a restart, a second replica) is harmless.
	var s *Stream
	for range 2 {
		if s, err = Ensure(ctx, nc, subj, Config{}); err != nil {
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
	if cfg.Storage != jetstream.FileStorage || cfg.Retention != jetstream.LimitsPolicy || cfg.Discard != jetstream.DiscardNew || !cfg.AllowAtomicPublish {
		t.Errorf("stream config storage=%v retention=%v discard=%v atomic=%v, want file, limits, discard new, atomic batches allowed",
			cfg.Storage, cfg.Retention, cfg.Discard, cfg.AllowAtomicPublish)
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

// streamEnv is a NATS server with the message stream declared.
type streamEnv struct {
	s    *Stream
	nc   *nats.Conn
	js   jetstream.JetStream
	subj subjects.Subjects
}

func newStreamEnv(t *testing.T, cfg Config) streamEnv {
	t.Helper()
	nc := testenv.NATSConn(t)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	s, err := Ensure(context.Background(), nc, subj, cfg)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return streamEnv{s: s, nc: nc, js: js, subj: subj}
}

// stored returns the stream's messages in stream order as
// "chat:sender:client" keys, and the atomic batch each was stored in ("":
// published alone).
func (e streamEnv) stored(t *testing.T) (out, batches []string) {
	t.Helper()
	ctx := context.Background()
	st, err := e.js.Stream(ctx, e.subj.MessagesStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var sm busapi.StreamMessage
		if err := json.Unmarshal(raw.Data, &sm); err != nil {
			t.Fatal(err)
		}
		out = append(out, MsgID(sm.ChatID, sm.SenderID, sm.ClientMsgID))
		batches = append(batches, raw.Header.Get(streampub.BatchIDHeader))
	}
	return out, batches
}

// publishAsOneBatch queues msgs while the stream is busy, so that they go
// out as one batch, in order, and returns each one's outcome.
func (e streamEnv) publishAsOneBatch(t *testing.T, msgs []chats.Message) []bool {
	t.Helper()
	ctx := context.Background()
	resume, ok := e.s.pub.Pause()
	if !ok {
		t.Fatal("the stream is publishing")
	}
	dups := make([]bool, len(msgs))
	var wg sync.WaitGroup
	for i, m := range msgs {
		// Queue in order: each Publish waits in the queue (busy).
		queued := len(msgs[:i]) + 1
		wg.Go(func() {
			dup, err := e.s.Publish(ctx, m)
			if err != nil {
				t.Errorf("publish %s: %v", m.ClientMsgID, err)
			}
			dups[i] = dup
		})
		testenv.Eventually(t, 5*time.Second, func() bool {
			n, _ := e.s.pub.Queued()
			return n == queued
		}, "message %d queued", i)
	}
	resume()
	wg.Wait()
	return dups
}

func msg(chat, sender int64, client string) chats.Message {
	return chats.Message{ChatID: chat, SenderID: sender, Sender: fmt.Sprintf("u%d", sender), ClientMsgID: client, Text: "t " + client, AcceptedAt: time.Unix(100, 0).UTC()}
}

func keys(msgs ...chats.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = MsgID(m.ChatID, m.SenderID, m.ClientMsgID)
	}
	return out
}

// Sends queued together are stored in their order, each once: pipelined, or
// from AtomicMin on as one atomic batch; a message id already in the stream,
// or twice in one batch, makes the stream refuse an atomic batch, which is
// then published one message at a time. Either way each retry is reported a
// duplicate and nothing is stored twice.
func TestPublishBatches(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		before   []chats.Message // published alone first
		batch    []chats.Message
		wantDups []bool
		want     []chats.Message // the stream's messages at the end
		atomic   bool            // the batch is stored as one when it may
	}{
		{
			name:     "new messages",
			batch:    []chats.Message{msg(1, 1, "a"), msg(2, 2, "a"), msg(1, 1, "b"), msg(1, 3, "a"), msg(2, 1, "a")},
			wantDups: []bool{false, false, false, false, false},
			want:     []chats.Message{msg(1, 1, "a"), msg(2, 2, "a"), msg(1, 1, "b"), msg(1, 3, "a"), msg(2, 1, "a")},
			atomic:   true,
		},
		{
			name:     "a retry of a stored message",
			before:   []chats.Message{msg(1, 1, "a")},
			batch:    []chats.Message{msg(1, 2, "x"), msg(1, 1, "a"), msg(1, 1, "b")},
			wantDups: []bool{false, true, false},
			want:     []chats.Message{msg(1, 1, "a"), msg(1, 2, "x"), msg(1, 1, "b")},
		},
		{
			name:     "a retry in the same batch",
			batch:    []chats.Message{msg(1, 1, "a"), msg(1, 2, "x"), msg(1, 1, "a")},
			wantDups: []bool{false, false, true},
			want:     []chats.Message{msg(1, 1, "a"), msg(1, 2, "x")},
		},
	}
	for _, tc := range tests {
		for _, atomic := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/atomic=%v", tc.name, atomic), func(t *testing.T) {
				t.Parallel()
				cfg := Config{AtomicMin: 100, PublishInFlight: 4}
				if atomic {
					cfg.AtomicMin = 2
				}
				e := newStreamEnv(t, cfg)
				for _, m := range tc.before {
					if _, err := e.s.Publish(context.Background(), m); err != nil {
						t.Fatal(err)
					}
				}
				if diff := cmp.Diff(tc.wantDups, e.publishAsOneBatch(t, tc.batch)); diff != "" {
					t.Errorf("duplicate flags (-want +got):\n%s", diff)
				}
				got, batches := e.stored(t)
				if diff := cmp.Diff(keys(tc.want...), got); diff != "" {
					t.Errorf("stream (-want +got):\n%s", diff)
				}
				fromBatch := batches[len(tc.before):]
				for _, b := range fromBatch {
					if one := b != "" && b == fromBatch[0]; one != (atomic && tc.atomic) {
						t.Errorf("stored in batches %q, want one atomic batch: %v", fromBatch, atomic && tc.atomic)
						break
					}
				}
			})
		}
	}
}

// Many senders at once, each sending one message at a time as a client
// does: every message is stored once and each sender's in its order.
func TestPublishConcurrentSendersKeepTheirOrder(t *testing.T) {
	t.Parallel()
	for _, inFlight := range []int{1, 4} {
		for _, atomicMin := range []int{2, 1000} {
			t.Run(fmt.Sprintf("atomic from %d, %d in flight", atomicMin, inFlight), func(t *testing.T) {
				t.Parallel()
				testConcurrentSenders(t, newStreamEnv(t, Config{AtomicMin: atomicMin, MaxBatch: 1000, PublishInFlight: inFlight}), atomicMin == 2)
			})
		}
	}
}

func testConcurrentSenders(t *testing.T, e streamEnv, wantAtomic bool) {
	const senders, each = 20, 15
	// A message left in the queue with no publisher would hang its sender.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				m := msg(int64(s%3+1), int64(s+1), fmt.Sprintf("m%03d", i))
				if dup, err := e.s.Publish(ctx, m); err != nil || dup {
					t.Errorf("publish: duplicate=%v err=%v", dup, err)
					return
				}
			}
		})
	}
	wg.Wait()
	got, batches := e.stored(t)
	if atomic := slices.ContainsFunc(batches, func(b string) bool { return b != "" }); atomic != wantAtomic {
		t.Errorf("stored in atomic batches: %v, want %v", atomic, wantAtomic)
	}
	if len(got) != senders*each {
		t.Fatalf("stream holds %d messages, want %d", len(got), senders*each)
	}
	next := map[string]int{}
	for _, k := range got {
		parts := strings.Split(k, ":")
		sender := parts[1]
		want := fmt.Sprintf("m%03d", next[sender])
		if parts[2] != want {
			t.Fatalf("sender %s: stored %s next, want %s (stream %v)", sender, parts[2], want, got)
		}
		next[sender]++
	}
}

// A stream declared by an earlier version, without atomic batches, is
// updated in place.
func TestEnsureUpdatesAnEarlierStream(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	nc := testenv.NATSConn(t)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	old := StreamConfig(subj, Config{})
	old.AllowAtomicPublish = false
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := Ensure(ctx, nc, subj, Config{}); err != nil {
		t.Fatalf("ensure over an earlier stream: %v", err)
	}
	st, err := js.Stream(ctx, subj.MessagesStream())
	if err != nil {
		t.Fatal(err)
	}
	if !st.CachedInfo().Config.AllowAtomicPublish {
		t.Error("atomic batches not allowed after the update")
	}
}

// TestEnsureReplacesAnEmptyWorkQueue: the work-queue stream of earlier
// versions is replaced when empty; one still holding messages (not stored
// yet) makes Ensure refuse, and stays as it was.
func TestEnsureReplacesAnEmptyWorkQueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	nc := testenv.NATSConn(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, held := range []int{0, 3} {
		subj, err := subjects.New(testenv.SubjectPrefix())
		if err != nil {
			t.Fatal(err)
		}
		old := StreamConfig(subj, Config{})
		old.Retention = jetstream.WorkQueuePolicy
		if _, err := js.CreateStream(ctx, old); err != nil {
			t.Fatal(err)
		}
		for i := range held {
			if _, err := js.Publish(ctx, subj.Message(1), fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
				t.Fatal(err)
			}
		}
		_, err = Ensure(ctx, nc, subj, Config{})
		st, serr := js.Stream(ctx, subj.MessagesStream())
		if serr != nil {
			t.Fatal(serr)
		}
		info := st.CachedInfo()
		if held == 0 {
			if err != nil {
				t.Fatalf("ensure over an empty work queue: %v", err)
			}
			if info.Config.Retention != jetstream.LimitsPolicy {
				t.Errorf("retention after replacing the empty work queue = %v, want limits", info.Config.Retention)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "work queue") {
			t.Fatalf("ensure over a work queue holding %d messages: err = %v, want a refusal naming the work queue", held, err)
		}
		if info.Config.Retention != jetstream.WorkQueuePolicy || info.State.Msgs != uint64(held) {
			t.Errorf("refused stream now: retention %v, %d messages; want the work queue with its %d", info.Config.Retention, info.State.Msgs, held)
		}
	}
}

// TestPublishWithoutAnswerFails: when the stream does not answer (here: it
// is gone and a plain subscriber takes its subject without replying), a
// send is reported as failed, whether it went out alone (pipelined) or in
// an atomic batch; it is never answered "accepted", and the publisher goes
// on serving later sends.
func TestPublishWithoutAnswerFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newStreamEnv(t, Config{AtomicMin: 2, PublishTimeout: 200 * time.Millisecond, PublishInFlight: 4})
	if err := e.js.DeleteStream(ctx, e.subj.MessagesStream()); err != nil {
		t.Fatal(err)
	}
	sub, err := e.nc.SubscribeSync(e.subj.MessagesAll())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if _, err := e.s.Publish(ctx, msg(1, 1, "alone")); err == nil {
		t.Error("a publish nobody acknowledged was answered accepted")
	}
	msgs := []chats.Message{msg(1, 2, "b1"), msg(1, 3, "b2"), msg(1, 4, "b3")}
	resume, ok := e.s.pub.Pause()
	if !ok {
		t.Fatal("the stream is publishing")
	}
	errs := make([]error, len(msgs))
	var wg sync.WaitGroup
	for i, m := range msgs {
		wg.Go(func() { _, errs[i] = e.s.Publish(ctx, m) })
		testenv.Eventually(t, 5*time.Second, func() bool {
			n, _ := e.s.pub.Queued()
			return n == i+1
		}, "message %d queued", i)
	}
	resume()
	wg.Wait()
	for i, err := range errs {
		if err == nil {
			t.Errorf("%s of an atomic batch nobody acknowledged was answered accepted", msgs[i].ClientMsgID)
		}
	}
	queued, busy := e.s.pub.Queued()
	if busy || queued > 0 {
		t.Errorf("publisher left busy=%v with %d queued", busy, queued)
	}
}

package history

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/communications/communications/libs/protocol"
)

type recordingStore struct {
	chatID, beforeSeq int64
	limit             int
	calls             int
}

func (s *recordingStore) Page(_ context.Context, chatID, beforeSeq int64, limit int) ([]Message, error) {
	s.chatID, s.beforeSeq, s.limit = chatID, beforeSeq, limit
	s.calls++
	return []Message{{ChatID: chatID, Seq: 1}}, nil
}

func (s *recordingStore) After(_ context.Context, chatID, afterSeq int64, limit int) ([]Message, error) {
	s.chatID, s.beforeSeq, s.limit = chatID, -afterSeq, limit
	s.calls++
	return []Message{{ChatID: chatID, Seq: afterSeq + 1}}, nil
}

func (s *recordingStore) Latest(_ context.Context, ids []int64) (map[int64]int64, error) {
	s.calls++
	out := map[int64]int64{}
	for _, id := range ids {
		out[id] = id * 10
	}
	return out, nil
}

func (s *recordingStore) Entry(_ context.Context, chatID, seq int64) (Message, error) {
	s.calls++
	if seq > 10 {
		return Message{}, ErrNotFound
	}
	return Message{ChatID: chatID, Seq: seq}, nil
}

func (s *recordingStore) BySender(_ context.Context, chatID, senderID int64, clientMsgID string) (Message, error) {
	s.calls++
	return Message{ChatID: chatID, Seq: 3, SenderID: senderID, ClientMsgID: clientMsgID}, nil
}

func TestEntry(t *testing.T) {
	tests := []struct {
		name             string
		chatID, seq, snd int64
		client           string
		wantSeq          int64
		wantErr          error
	}{
		{name: "by seq", chatID: 1, seq: 4, wantSeq: 4},
		{name: "by client id", chatID: 1, snd: 7, client: "c-1", wantSeq: 3},
		{name: "not stored", chatID: 1, seq: 11, wantErr: ErrNotFound},
		{name: "no chat", seq: 4, wantErr: ErrInvalidPage},
		{name: "negative seq", chatID: 1, seq: -1, snd: 7, client: "c-1", wantErr: ErrInvalidPage},
		{name: "client id without sender", chatID: 1, client: "c-1", wantErr: ErrInvalidPage},
		{name: "nothing asked", chatID: 1, wantErr: ErrInvalidPage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewService(&recordingStore{}).Entry(context.Background(), tc.chatID, tc.seq, tc.snd, tc.client)
			if !errors.Is(err, tc.wantErr) || (err == nil && m.Seq != tc.wantSeq) {
				t.Errorf("Entry = seq %d, %v; want seq %d, %v", m.Seq, err, tc.wantSeq, tc.wantErr)
			}
		})
	}
}

func TestEvent(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := Message{ChatID: 1, Seq: 2, SenderID: 3, Sender: "ann", ClientMsgID: "c", Text: "x", SentAt: at}
	if ev := m.Event(); ev.Type != protocol.TypeMessage || ev.EditedAt != nil || ev.Kind != "" {
		t.Errorf("message event = %+v", ev)
	}
	m.EditedAt = at.Add(time.Minute)
	if ev := m.Event(); ev.EditedAt == nil || !ev.EditedAt.Equal(m.EditedAt) {
		t.Errorf("edited message event = %+v, want edited_at %v", ev, m.EditedAt)
	}
	d := Message{ChatID: 1, Seq: 5, Kind: KindDelete, TargetSeq: 2, SenderID: 3}
	if ev := d.Event(); ev.Kind != protocol.KindDelete || ev.TargetSeq != 2 {
		t.Errorf("delete event = %+v", ev)
	}
}

func TestLatest(t *testing.T) {
	t.Parallel()
	store := &recordingStore{}
	svc := NewService(store)
	got, err := svc.Latest(context.Background(), []int64{1, 2})
	if err != nil || got[2] != 20 {
		t.Fatalf("Latest = %v, %v", got, err)
	}
	if _, err := svc.Latest(context.Background(), make([]int64, MaxLatestChats+1)); !errors.Is(err, ErrInvalidPage) {
		t.Errorf("too many chats: %v, want ErrInvalidPage", err)
	}
	if got, err := svc.Latest(context.Background(), nil); err != nil || len(got) != 0 || store.calls != 1 {
		t.Errorf("no chats: %v, %v (%d store calls), want an empty answer without a query", got, err, store.calls)
	}
}

func TestPageAfter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		chatID    int64
		afterSeq  int64
		limit     int
		wantErr   error
		wantLimit int
	}{
		{name: "from the start", chatID: 1, afterSeq: 0, wantLimit: DefaultPageLimit},
		{name: "after 41", chatID: 1, afterSeq: 41, limit: 20, wantLimit: 20},
		{name: "negative after_seq", chatID: 1, afterSeq: -1, wantErr: ErrInvalidPage},
		{name: "no chat", chatID: 0, wantErr: ErrInvalidPage},
		{name: "limit too large", chatID: 1, limit: MaxPageLimit + 1, wantErr: ErrInvalidPage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			store := &recordingStore{}
			_, err := NewService(store).PageAfter(context.Background(), tc.chatID, tc.afterSeq, tc.limit)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				if store.calls != 0 {
					t.Error("store called for an invalid request")
				}
				return
			}
			if store.calls != 1 || store.limit != tc.wantLimit || store.beforeSeq != -tc.afterSeq {
				t.Errorf("store asked for after %d limit %d (%d calls); want after %d limit %d",
					-store.beforeSeq, store.limit, store.calls, tc.afterSeq, tc.wantLimit)
			}
		})
	}
}

func TestPage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		chatID    int64
		beforeSeq int64
		limit     int
		wantErr   error
		wantLimit int
		wantCall  bool
	}{
		{name: "default limit", chatID: 1, wantLimit: DefaultPageLimit, wantCall: true},
		{name: "explicit limit", chatID: 1, beforeSeq: 40, limit: 10, wantLimit: 10, wantCall: true},
		{name: "max limit", chatID: 1, limit: MaxPageLimit, wantLimit: MaxPageLimit, wantCall: true},
		{name: "limit too large", chatID: 1, limit: MaxPageLimit + 1, wantErr: ErrInvalidPage},
		{name: "negative limit", chatID: 1, limit: -1, wantErr: ErrInvalidPage},
		{name: "no chat", chatID: 0, wantErr: ErrInvalidPage},
		{name: "negative before_seq", chatID: 1, beforeSeq: -5, wantErr: ErrInvalidPage},
		{name: "before the first message", chatID: 1, beforeSeq: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			store := &recordingStore{}
			msgs, err := NewService(store).Page(context.Background(), tc.chatID, tc.beforeSeq, tc.limit)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if msgs == nil {
				t.Error("page is nil, want a (possibly empty) slice")
			}
			if (store.calls == 1) != tc.wantCall {
				t.Fatalf("store called %d times, want call: %v", store.calls, tc.wantCall)
			}
			if tc.wantCall && (store.limit != tc.wantLimit || store.chatID != tc.chatID || store.beforeSeq != tc.beforeSeq) {
				t.Errorf("store asked for chat %d before %d limit %d; want chat %d before %d limit %d",
					store.chatID, store.beforeSeq, store.limit, tc.chatID, tc.beforeSeq, tc.wantLimit)
			}
		})
	}
}

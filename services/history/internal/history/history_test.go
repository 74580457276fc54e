package history

import (
	"context"
	"errors"
	"testing"
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

package history

import (
	"context"
	"errors"
	"testing"

	"github.com/communications/communications/libs/protocol"
)

func (s *recordingStore) Unread(_ context.Context, _ int64, marks []ReadMark, limit, window int) ([]UnreadCount, error) {
	s.calls++
	s.limit = limit
	out := make([]UnreadCount, len(marks))
	for i, m := range marks {
		out[i] = UnreadCount{ChatID: m.ChatID, LastSeq: m.Seq + int64(window)}
	}
	return out, nil
}

func TestUnread(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		user      int64
		marks     []ReadMark
		wantErr   bool
		wantCalls int
	}{
		{name: "two chats", user: 7, marks: []ReadMark{{ChatID: 1, Seq: 4}, {ChatID: 2}}, wantCalls: 1},
		{name: "none", user: 7},
		{name: "no user", user: 0, marks: []ReadMark{{ChatID: 1}}, wantErr: true},
		{name: "bad chat", user: 7, marks: []ReadMark{{ChatID: 0}}, wantErr: true},
		{name: "negative position", user: 7, marks: []ReadMark{{ChatID: 1, Seq: -1}}, wantErr: true},
		{name: "too many chats", user: 7, marks: make([]ReadMark, MaxUnreadChats+1), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			store := &recordingStore{}
			got, err := NewService(store).Unread(context.Background(), tc.user, tc.marks)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidPage) || store.calls != 0 {
					t.Errorf("error %v after %d store calls, want ErrInvalidPage and none", err, store.calls)
				}
				return
			}
			if err != nil || len(got) != len(tc.marks) || store.calls != tc.wantCalls {
				t.Fatalf("got %v, %v after %d store calls; want %d counts after %d", got, err, store.calls, len(tc.marks), tc.wantCalls)
			}
			if tc.wantCalls > 0 && (store.limit != protocol.MaxUnread || got[0].LastSeq != tc.marks[0].Seq+UnreadScanWindow) {
				t.Errorf("store asked with limit %d and window %d, want %d and %d", store.limit, got[0].LastSeq-tc.marks[0].Seq, protocol.MaxUnread, UnreadScanWindow)
			}
		})
	}
}

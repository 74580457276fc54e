package msgstore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/services/history/internal/history"
)

// TestUnread: messages of others after the position count, up to the cap;
// the user's own messages, deleted messages and edit or delete entries do
// not; a chat with no message has none.
func TestUnread(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t)
	ctx := context.Background()
	const me, other = 20, 10

	// Chat 1: 1-6 by other, 7-8 by me, 9-10 by other; 3 is deleted and 9
	// is an edit of 1.
	var batch []history.Message
	for i := 1; i <= 10; i++ {
		sender := int64(other)
		if i == 7 || i == 8 {
			sender = me
		}
		batch = append(batch, msg(1, sender, fmt.Sprint("c1-", i), "x"))
	}
	// Chat 2: 150 messages by other.
	for i := 1; i <= 150; i++ {
		batch = append(batch, msg(2, other, fmt.Sprint("c2-", i), "x"))
	}
	if _, err := store.StoreBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE messages SET deleted = true, text = '' WHERE chat_id = 1 AND seq = 3`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE messages SET kind = 'edit', target_seq = 1 WHERE chat_id = 1 AND seq = 9`); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		user   int64
		marks  []history.ReadMark
		window int
		want   []history.UnreadCount
	}{
		{
			name:  "positions",
			user:  me,
			marks: []history.ReadMark{{ChatID: 3}, {ChatID: 1, Seq: 2}, {ChatID: 1}, {ChatID: 1, Seq: 10}, {ChatID: 1, Seq: 99}, {ChatID: 2, Seq: 120}},
			want: []history.UnreadCount{
				{ChatID: 3},
				{ChatID: 1, LastSeq: 10, Unread: 4}, // 4, 5, 6, 10
				{ChatID: 1, LastSeq: 10, Unread: 6}, // and 1, 2
				{ChatID: 1, LastSeq: 10},
				{ChatID: 1, LastSeq: 10},
				{ChatID: 2, LastSeq: 150, Unread: 30},
			},
		},
		{
			name:  "capped",
			user:  me,
			marks: []history.ReadMark{{ChatID: 2}, {ChatID: 2, Seq: 49}, {ChatID: 2, Seq: 51}},
			want: []history.UnreadCount{
				{ChatID: 2, LastSeq: 150, Unread: protocol.MaxUnread},
				{ChatID: 2, LastSeq: 150, Unread: protocol.MaxUnread},
				{ChatID: 2, LastSeq: 150, Unread: 99},
			},
		},
		{
			name:  "own messages",
			user:  other,
			marks: []history.ReadMark{{ChatID: 1}, {ChatID: 2}},
			want:  []history.UnreadCount{{ChatID: 1, LastSeq: 10, Unread: 2}, {ChatID: 2, LastSeq: 150}}, // 7, 8
		},
		{
			name:   "window",
			user:   me,
			marks:  []history.ReadMark{{ChatID: 2}, {ChatID: 2, Seq: 140}, {ChatID: 1, Seq: 4}},
			window: 20,
			want:   []history.UnreadCount{{ChatID: 2, LastSeq: 150, Unread: 20}, {ChatID: 2, LastSeq: 150, Unread: 10}, {ChatID: 1, LastSeq: 10, Unread: 3}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			window := tc.window
			if window == 0 {
				window = history.UnreadScanWindow
			}
			got, err := store.Unread(ctx, tc.user, tc.marks, protocol.MaxUnread, window)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("unread (-want +got):\n%s", diff)
			}
		})
	}
}

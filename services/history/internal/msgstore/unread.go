package msgstore

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/communications/communications/services/history/internal/history"
)

// unreadQuery counts, per read position, the unread messages in one
// statement. Each chat's count reads at most $5 rows of the primary key
// (chat_id, seq) after the position (LIMIT inside the count), and never
// further back than the newest $4 sequence numbers, so a long unread chat
// costs no more than a short one.
const unreadQuery = `
	SELECT p.chat_id, coalesce(c.last_seq, 0), u.n
	FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS p (chat_id, read_seq, ord)
	LEFT JOIN chat_counters c ON c.chat_id = p.chat_id
	CROSS JOIN LATERAL (
	    SELECT count(*) AS n FROM (
	        SELECT 1 FROM messages m
	        WHERE m.chat_id = p.chat_id
	          AND m.seq > greatest(p.read_seq, coalesce(c.last_seq, 0) - $4)
	          AND m.kind = 'message' AND NOT m.deleted AND m.sender_id <> $3
	        LIMIT $5
	    ) AS unread
	) AS u
	ORDER BY p.ord`

// Unread implements history.UnreadStore.
func (s *Store) Unread(ctx context.Context, userID int64, marks []history.ReadMark, limit, window int) ([]history.UnreadCount, error) {
	chats := make([]int64, len(marks))
	seqs := make([]int64, len(marks))
	for i, m := range marks {
		chats[i], seqs[i] = m.ChatID, m.Seq
	}
	rows, err := s.pool.Query(ctx, unreadQuery, chats, seqs, userID, window, limit)
	if err != nil {
		return nil, fmt.Errorf("select unread: %w", err)
	}
	out := make([]history.UnreadCount, 0, len(marks))
	var c history.UnreadCount
	_, err = pgx.ForEachRow(rows, []any{&c.ChatID, &c.LastSeq, &c.Unread}, func() error {
		out = append(out, c)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("select unread: %w", err)
	}
	return out, nil
}

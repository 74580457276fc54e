package msgstore_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// seedChat inserts n messages into chat directly (much faster than through
// StoreBatch) and sets its counter, so that pages can be read from a chat of
// a million messages.
func seedChat(b *testing.B, pool *pgxpool.Pool, chat int64, n int) {
	b.Helper()
	ctx := context.Background()
	_, err := pool.Exec(ctx, `
		INSERT INTO messages (chat_id, seq, sender_id, sender, client_msg_id, text, sent_at)
		SELECT $1, s, 1 + s % 50, 'user' || (1 + s % 50), 'c' || s,
		       'a typical chat message of some length, number ' || s,
		       timestamptz '2026-01-01' + s * interval '1 second'
		FROM generate_series(1, $2::bigint) AS s`, chat, n)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO chat_counters (chat_id, last_seq) VALUES ($1, $2)`, chat, n); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE messages`); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPage reads pages of 50 from a chat of 100 messages and from a
// chat of a million, at its newest end, its middle and its oldest end, in
// both directions: keyset reads on the primary key cost the same wherever
// they start and however long the chat is.
func BenchmarkPage(b *testing.B) {
	store, pool := newStore(b)
	ctx := context.Background()
	const small, large = 100, 1_000_000
	seedChat(b, pool, 1, small)
	seedChat(b, pool, 2, large)
	const limit = 50
	cases := []struct {
		name   string
		chat   int64
		before int64 // 0: the newest page
		after  int64
		isPage bool
	}{
		{"small/newest", 1, 0, 0, true},
		{"small/before-middle", 1, small/2 + 1, 0, true},
		{"small/after-start", 1, 0, 0, false},
		{"million/newest", 2, 0, 0, true},
		{"million/before-middle", 2, large / 2, 0, true},
		{"million/before-start", 2, 2 * limit, 0, true},
		{"million/after-start", 2, 0, 0, false},
		{"million/after-middle", 2, 0, large / 2, false},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				var n int
				if c.isPage {
					msgs, err := store.Page(ctx, c.chat, c.before, limit)
					if err != nil {
						b.Fatal(err)
					}
					n = len(msgs)
				} else {
					msgs, err := store.After(ctx, c.chat, c.after, limit)
					if err != nil {
						b.Fatal(err)
					}
					n = len(msgs)
				}
				if n != limit {
					b.Fatalf("page of %d messages, want %d", n, limit)
				}
			}
		})
	}
}

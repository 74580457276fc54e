package msgstore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/communications/communications/services/history/internal/history"
)

// BenchmarkCopyBatch is the baseline of BenchmarkStoreBatch: the same
// batches (500 messages over 100 chats, built the same way) written with
// pgx's CopyFrom (the COPY protocol) in one transaction, numbered in
// memory.
//
//   - copy: only the COPY of the rows, the least PostgreSQL can do to
//     insert them;
//   - copy+counters: also what numbering needs at the least: lock the
//     batch's counter rows, COPY, update the counters (no duplicate lookup).
func BenchmarkCopyBatch(b *testing.B) {
	columns := []string{"chat_id", "seq", "sender_id", "sender", "client_msg_id", "text", "sent_at"}
	for _, counters := range []bool{false, true} {
		name := "copy"
		if counters {
			name = "copy+counters"
		}
		b.Run(name, func(b *testing.B) {
			_, pool := newStore(b)
			ctx := context.Background()
			const size, chats = 500, 100
			chatIDs := make([]int64, chats)
			for i := range chatIDs {
				chatIDs[i] = int64(i + 1)
			}
			if _, err := pool.Exec(ctx, `INSERT INTO chat_counters (chat_id) SELECT unnest($1::bigint[])`, chatIDs); err != nil {
				b.Fatal(err)
			}
			lastSeq := make(map[int64]int64, chats)
			n := 0
			for b.Loop() {
				batch := make([]history.Message, size)
				for i := range batch {
					batch[i] = msg(int64(n%chats+1), 1, fmt.Sprint(n), "a typical chat message of some length")
					n++
				}
				tx, err := pool.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if counters {
					if _, err := tx.Exec(ctx, `SELECT last_seq FROM chat_counters WHERE chat_id = ANY($1::bigint[]) ORDER BY chat_id FOR UPDATE`, chatIDs); err != nil {
						b.Fatal(err)
					}
				}
				rows := make([][]any, len(batch))
				for i, m := range batch {
					lastSeq[m.ChatID]++
					rows[i] = []any{m.ChatID, lastSeq[m.ChatID], m.SenderID, m.Sender, m.ClientMsgID, m.Text, m.SentAt}
				}
				copied, err := tx.CopyFrom(ctx, pgx.Identifier{"messages"}, columns, pgx.CopyFromRows(rows))
				if err != nil {
					b.Fatal(err)
				}
				if copied != size {
					b.Fatalf("copied %d rows, want %d", copied, size)
				}
				if counters {
					seqs := make([]int64, chats)
					for i, c := range chatIDs {
						seqs[i] = lastSeq[c]
					}
					if _, err := tx.Exec(ctx, `UPDATE chat_counters c SET last_seq = u.last_seq
						FROM unnest($1::bigint[], $2::bigint[]) AS u(chat_id, last_seq) WHERE c.chat_id = u.chat_id`, chatIDs, seqs); err != nil {
						b.Fatal(err)
					}
				}
				if err := tx.Commit(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

package msgstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/history/internal/history"
	"github.com/communications/communications/services/history/internal/msgstore"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func newStore(t testing.TB) (*msgstore.Store, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(testenv.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8
	rc := &releaseCheck{}
	cfg.ConnConfig.Tracer = rc
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		if n := rc.inTx.Load(); n != 0 {
			t.Errorf("%d connections were handed back to the pool inside a transaction", n)
		}
	})
	if err := pgdb.Migrate(ctx, pool, msgstore.Migrations(), msgstore.MigrationTable, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	return msgstore.New(pool), pool
}

// releaseCheck counts the connections handed back to the pool inside a
// transaction (the pool closes them): the store ends every transaction it
// begins, failed ones included, and keeps the connection.
type releaseCheck struct{ inTx atomic.Int64 }

func (*releaseCheck) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (*releaseCheck) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *releaseCheck) TraceRelease(_ *pgxpool.Pool, d pgxpool.TraceReleaseData) {
	if d.Conn.PgConn().TxStatus() != 'I' {
		r.inTx.Add(1)
	}
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func msg(chat, sender int64, client, text string) history.Message {
	return history.Message{ChatID: chat, SenderID: sender, Sender: fmt.Sprintf("user%d", sender), ClientMsgID: client, Text: text, SentAt: t0}
}

// seqs returns the seq and duplicate flag of each stored message.
func seqs(stored []history.Stored) []string {
	out := make([]string, len(stored))
	for i, s := range stored {
		out[i] = fmt.Sprintf("%d/%d", s.ChatID, s.Seq)
		if s.Duplicate {
			out[i] += " dup"
		}
	}
	return out
}

func TestStoreBatch(t *testing.T) {
	t.Parallel()
	store, _ := newStore(t)
	ctx := context.Background()

	// Interleaved chats: each chat numbered from 1 in batch order.
	got, err := store.StoreBatch(ctx, []history.Message{
		msg(1, 10, "a", "1a"), msg(2, 10, "b", "2b"), msg(1, 11, "c", "1c"),
		msg(3, 12, "d", "3d"), msg(2, 11, "e", "2e"), msg(1, 10, "f", "1f"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"1/1", "2/1", "1/2", "3/1", "2/2", "1/3"}, seqs(got)); diff != "" {
		t.Errorf("first batch (-want +got):\n%s", diff)
	}
	if n := store.Lookups(); n != 0 {
		t.Errorf("first batch: stored again with the lookup %d times, want 0 (nothing stored before)", n)
	}

	// A retry of a stored message (even with other text) and a message
	// repeated inside the batch get the original back; no number is spent.
	got, err = store.StoreBatch(ctx, []history.Message{
		msg(1, 11, "g", "1g"), msg(1, 11, "c", "retried"), msg(2, 10, "h", "2h"),
		msg(1, 11, "g", "1g again"), msg(1, 12, "c", "other sender, same id"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"1/4", "1/2 dup", "2/3", "1/4 dup", "1/5"}, seqs(got)); diff != "" {
		t.Errorf("second batch (-want +got):\n%s", diff)
	}
	if got[1].Text != "1c" || got[3].Text != "1g" {
		t.Errorf("duplicates carry texts %q, %q; want the originals 1c, 1g", got[1].Text, got[3].Text)
	}
	// The unique key refused the retry, so the batch was stored again
	// with the lookup, once.
	if n := store.Lookups(); n != 1 {
		t.Errorf("second batch: stored again with the lookup %d times, want 1", n)
	}

	// Only duplicates: nothing changes.
	got, err = store.StoreBatch(ctx, []history.Message{msg(3, 12, "d", "3d"), msg(3, 12, "d", "3d")})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"3/1 dup", "3/1 dup"}, seqs(got)); diff != "" {
		t.Errorf("duplicate batch (-want +got):\n%s", diff)
	}
	got, err = store.StoreBatch(ctx, []history.Message{msg(3, 12, "i", "3i")})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"3/2"}, seqs(got)); diff != "" {
		t.Errorf("after duplicates (-want +got):\n%s", diff)
	}
}

// TestStoreBatchOtherConflict: only the unique key on the client message
// id sends a batch back for the lookup; any other refusal is the batch's
// error.
func TestStoreBatchOtherConflict(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t)
	ctx := context.Background()
	if _, err := store.StoreBatch(ctx, []history.Message{msg(1, 10, "a", "first")}); err != nil {
		t.Fatal(err)
	}
	// A counter behind its chat's messages: the next number is taken.
	if _, err := pool.Exec(ctx, `UPDATE chat_counters SET last_seq = 0 WHERE chat_id = 1`); err != nil {
		t.Fatal(err)
	}
	_, err := store.StoreBatch(ctx, []history.Message{msg(1, 10, "b", "second")})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.ConstraintName != "messages_pkey" {
		t.Fatalf("store over a taken number: %v, want the primary key's refusal", err)
	}
	if n := store.Lookups(); n != 0 {
		t.Errorf("stored again with the lookup %d times, want 0", n)
	}
	if _, err := store.BySender(ctx, 1, 10, "b"); !errors.Is(err, history.ErrNotFound) {
		t.Errorf("refused message: %v, want ErrNotFound (nothing stored)", err)
	}
	// The failed batch's transaction (its BEGIN sent in a pipeline) was
	// rolled back: no connection is left in it, the counter is as it was,
	// and the next batch stores. (newStore's tracer checks that the
	// connection was handed back outside the transaction.)
	noOpenTransaction(t, pool)
	ct, err := pool.Exec(ctx, `UPDATE chat_counters SET last_seq = 1 WHERE chat_id = 1 AND last_seq = 0`)
	if err != nil {
		t.Fatal(err)
	}
	if ct.RowsAffected() != 1 {
		t.Errorf("chat 1's counter moved in the failed batch")
	}
	got, err := store.StoreBatch(ctx, []history.Message{msg(1, 10, "b", "second")})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"1/2"}, seqs(got)); diff != "" {
		t.Errorf("after the failed batch (-want +got):\n%s", diff)
	}
}

// noOpenTransaction fails t if a connection of the test's database is
// still inside a transaction.
func noOpenTransaction(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	var n int
	err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND state LIKE 'idle in transaction%'`).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d connections left inside a transaction", n)
	}
}

func TestStoreBatchConcurrent(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t)
	ctx := context.Background()
	const workers, batches, perBatch = 6, 15, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*batches)
	for w := range workers {
		wg.Go(func() {
			for b := range batches {
				msgs := make([]history.Message, 0, perBatch)
				for i := range perBatch {
					// Each worker goes through its batch in another order,
					// so chats come in different orders; workers 2k and
					// 2k+1 send the same keys.
					n := b*perBatch + (i+3*w)%perBatch
					chat := int64(n%4 + 1)
					msgs = append(msgs, msg(chat, int64(w/2), fmt.Sprintf("k%d", n), "x"))
				}
				if _, err := store.StoreBatch(ctx, msgs); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("store batch: %v", err)
	}
	rows, err := pool.Query(ctx, `SELECT chat_id, count(*), min(seq), max(seq),
		(SELECT last_seq FROM chat_counters c WHERE c.chat_id = m.chat_id)
		FROM messages m GROUP BY chat_id ORDER BY chat_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	total := int64(0)
	for rows.Next() {
		var chat, n, lo, hi, last int64
		if err := rows.Scan(&chat, &n, &lo, &hi, &last); err != nil {
			t.Fatal(err)
		}
		if lo != 1 || hi != n || last != n {
			t.Errorf("chat %d: %d messages with seqs %d..%d, counter %d; want contiguous from 1", chat, n, lo, hi, last)
		}
		total += n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	// Workers 2k and 2k+1 send the same keys: half the messages are unique.
	if want := int64(workers * batches * perBatch / 2); total != want {
		t.Errorf("stored %d messages, want %d", total, want)
	}
}

func TestPage(t *testing.T) {
	t.Parallel()
	store, _ := newStore(t)
	ctx := context.Background()
	var batch []history.Message
	for i := range 10 {
		batch = append(batch, msg(7, 1, fmt.Sprintf("c%d", i), fmt.Sprintf("t%d", i+1)))
	}
	batch = append(batch, msg(8, 1, "other", "other chat"))
	if _, err := store.StoreBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		chat      int64
		beforeSeq int64
		afterSeq  int64
		after     bool // read with After from afterSeq
		limit     int
		want      []int64
	}{
		{name: "after 0", chat: 7, after: true, limit: 3, want: []int64{1, 2, 3}},
		{name: "after", chat: 7, afterSeq: 4, after: true, limit: 3, want: []int64{5, 6, 7}},
		{name: "after, short page", chat: 7, afterSeq: 8, after: true, limit: 5, want: []int64{9, 10}},
		{name: "after the last", chat: 7, afterSeq: 10, after: true, limit: 5, want: []int64{}},
		{name: "newest", chat: 7, limit: 3, want: []int64{8, 9, 10}},
		{name: "all", chat: 7, limit: 100, want: []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{name: "before", chat: 7, beforeSeq: 8, limit: 3, want: []int64{5, 6, 7}},
		{name: "before, short page", chat: 7, beforeSeq: 3, limit: 5, want: []int64{1, 2}},
		{name: "before past the end", chat: 7, beforeSeq: 99, limit: 2, want: []int64{9, 10}},
		{name: "before the first", chat: 7, beforeSeq: 1, limit: 5, want: []int64{}},
		{name: "other chat", chat: 8, limit: 5, want: []int64{1}},
		{name: "empty chat", chat: 9, limit: 5, want: []int64{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			page := store.Page
			arg := tc.beforeSeq
			if tc.after {
				page, arg = store.After, tc.afterSeq
			}
			msgs, err := page(ctx, tc.chat, arg, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]int64, len(msgs))
			for i, m := range msgs {
				got[i] = m.Seq
				if m.ChatID != tc.chat || !m.SentAt.Equal(t0) || (tc.chat == 7 && m.Text != fmt.Sprintf("t%d", m.Seq)) {
					t.Errorf("message %+v does not match what was stored", m)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("seqs (-want +got):\n%s", diff)
			}
		})
	}
}

// BenchmarkStoreBatch stores batches of 500 new messages over 100 chats;
// msgs/s is the writer's ceiling on this database.
func BenchmarkStoreBatch(b *testing.B) {
	store, _ := newStore(b)
	ctx := context.Background()
	const size = 500
	n := 0
	for b.Loop() {
		batch := make([]history.Message, size)
		for i := range batch {
			batch[i] = msg(int64(n%100+1), 1, fmt.Sprint(n), "a typical chat message of some length")
			n++
		}
		if _, err := store.StoreBatch(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
}

// change returns an edit (text set) or a deletion (text empty) of target,
// accepted minute minutes after t0.
func change(chat, sender int64, client string, target int64, text string, minute int) history.Message {
	m := msg(chat, sender, client, text)
	m.Kind, m.TargetSeq, m.SentAt = history.KindEdit, target, t0.Add(time.Duration(minute)*time.Minute)
	if text == "" {
		m.Kind = history.KindDelete
	}
	return m
}

// outcomes describes each stored entry: chat/seq, "dup", or the rejection.
func outcomes(stored []history.Stored) []string {
	out := seqs(stored)
	for i, s := range stored {
		switch {
		case errors.Is(s.Rejected, history.ErrTargetNotFound):
			out[i] = "not found"
		case errors.Is(s.Rejected, history.ErrNotSender):
			out[i] = "not sender"
		case errors.Is(s.Rejected, history.ErrTargetDeleted):
			out[i] = "deleted"
		case s.Rejected != nil:
			out[i] = s.Rejected.Error()
		}
	}
	return out
}

// entryState describes a stored entry as history shows it.
func entryState(m history.Message) string {
	s := fmt.Sprintf("%d %s", m.Seq, m.Kind)
	if m.Kind == history.KindMessage {
		s += "message"
	}
	if m.TargetSeq != 0 {
		s += fmt.Sprintf(" of %d", m.TargetSeq)
	}
	s += fmt.Sprintf(" %q", m.Text)
	if !m.EditedAt.IsZero() {
		s += fmt.Sprintf(" edited +%s", m.EditedAt.Sub(t0))
	}
	if m.Deleted {
		s += " deleted"
	}
	return s
}

func TestStoreChanges(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t)
	ctx := context.Background()

	got, err := store.StoreBatch(ctx, []history.Message{
		msg(1, 10, "a", "hello"),
		msg(1, 11, "b", "bob's"),
		change(1, 10, "e1", 1, "hello!", 1),
		change(1, 11, "e2", 1, "hijack", 2),    // another user's message
		change(1, 10, "e3", 99, "nothing", 3),  // no such entry
		change(1, 11, "d1", 2, "", 4),          // bob deletes his own
		change(1, 11, "e4", 2, "too late", 5),  // edit after delete, in one batch
		msg(1, 10, "c", "new one"),             //
		change(1, 10, "e5", 5, "in batch", 6),  // target stored in the same batch
		change(1, 10, "e1", 1, "retried", 7),   // a retry of e1
		change(1, 10, "e6", 3, "an edit's", 8), // an edit is no message
		msg(2, 10, "a", "other chat"),
		change(2, 10, "e1", 1, "other chat's edit", 9),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"1/1", "1/2", "1/3", "not sender", "not found", "1/4", "deleted", "1/5", "1/6", "1/3 dup", "not found", "2/1", "2/2"}
	if diff := cmp.Diff(want, outcomes(got)); diff != "" {
		t.Errorf("first batch (-want +got):\n%s", diff)
	}
	if got[9].Text != "hello!" || got[9].Kind != history.KindEdit || got[9].TargetSeq != 1 {
		t.Errorf("retried edit = %+v, want the original edit", got[9].Message)
	}
	if got[7].Text != "new one" || !got[7].EditedAt.IsZero() {
		t.Errorf("message 5 as published = %+v, want as sent (its edit follows)", got[7].Message)
	}

	page := func(chat int64) []string {
		t.Helper()
		msgs, err := store.Page(ctx, chat, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]string, len(msgs))
		for i, m := range msgs {
			out[i] = entryState(m)
		}
		return out
	}
	wantPage := []string{
		`1 message "hello!" edited +1m0s`,
		`2 message "" deleted`,
		`3 edit of 1 "hello!"`,
		`4 delete of 2 ""`,
		`5 message "in batch" edited +6m0s`,
		`6 edit of 5 "in batch"`,
	}
	if diff := cmp.Diff(wantPage, page(1)); diff != "" {
		t.Errorf("chat 1 after the first batch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{`1 message "other chat's edit" edited +9m0s`, `2 edit of 1 "other chat's edit"`}, page(2)); diff != "" {
		t.Errorf("chat 2 (-want +got):\n%s", diff)
	}

	// A message, its edit and its deletion in one batch: the deletion
	// takes the text out of the edit the same batch inserted.
	got, err = store.StoreBatch(ctx, []history.Message{
		msg(3, 10, "x", "regret"),
		change(3, 10, "xe", 1, "regret!", 20),
		change(3, 10, "xd", 1, "", 21),
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"3/1", "3/2", "3/3"}, outcomes(got)); diff != "" {
		t.Errorf("chat 3's batch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{`1 message "" edited +20m0s deleted`, `2 edit of 1 ""`, `3 delete of 1 ""`}, page(3)); diff != "" {
		t.Errorf("chat 3 (-want +got):\n%s", diff)
	}

	// A later batch: targets loaded from the table.
	got, err = store.StoreBatch(ctx, []history.Message{
		change(1, 10, "d2", 1, "", 10),
		change(1, 10, "e1", 1, "retried after the delete", 11), // still the original
		change(1, 10, "d3", 1, "", 12),                         // deleted twice
		change(1, 10, "e7", 5, "again", 13),
		change(1, 11, "e4", 2, "retried too late", 14), // rejected before, rejected again
		change(1, 11, "d1", 2, "", 15),                 // a retried delete: the original
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"1/7", "1/3 dup", "deleted", "1/8", "deleted", "1/4 dup"}, outcomes(got)); diff != "" {
		t.Errorf("second batch (-want +got):\n%s", diff)
	}
	wantPage = []string{
		`1 message "" edited +1m0s deleted`,
		`2 message "" deleted`,
		`3 edit of 1 ""`, // a deletion takes the text out of the edits
		`4 delete of 2 ""`,
		`5 message "again" edited +13m0s`,
		`6 edit of 5 "in batch"`,
		`7 delete of 1 ""`,
		`8 edit of 5 "again"`,
	}
	if diff := cmp.Diff(wantPage, page(1)); diff != "" {
		t.Errorf("chat 1 after the second batch (-want +got):\n%s", diff)
	}

	// Only rejected changes: nothing is written, no number spent. A
	// change that would be rejected is decided with the lookup (it may be
	// a retry), so the batch is stored a second time.
	lookups := store.Lookups()
	got, err = store.StoreBatch(ctx, []history.Message{change(1, 11, "e8", 5, "not mine", 16)})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"not sender"}, outcomes(got)); diff != "" {
		t.Errorf("rejected batch (-want +got):\n%s", diff)
	}
	if n := store.Lookups() - lookups; n != 1 {
		t.Errorf("rejected batch: stored again with the lookup %d times, want 1", n)
	}
	var last int64
	if err := pool.QueryRow(ctx, `SELECT last_seq FROM chat_counters WHERE chat_id = 1`).Scan(&last); err != nil {
		t.Fatal(err)
	}
	if last != 8 {
		t.Errorf("chat 1 counter = %d, want 8", last)
	}

	// Single entries, by sequence and by client message id.
	if m, err := store.Entry(ctx, 1, 5); err != nil || m.Text != "again" || m.Kind != history.KindMessage {
		t.Errorf("entry 1/5 = %+v, %v", m, err)
	}
	if m, err := store.BySender(ctx, 1, 10, "d2"); err != nil || m.Seq != 7 || m.Kind != history.KindDelete || m.TargetSeq != 1 {
		t.Errorf("entry of d2 = %+v, %v; want the delete at 7", m, err)
	}
	if _, err := store.Entry(ctx, 1, 99); !errors.Is(err, history.ErrNotFound) {
		t.Errorf("entry 1/99: %v, want ErrNotFound", err)
	}
	if _, err := store.BySender(ctx, 1, 11, "e4"); !errors.Is(err, history.ErrNotFound) {
		t.Errorf("rejected e4: %v, want ErrNotFound", err)
	}
}

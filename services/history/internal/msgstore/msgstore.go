// Package msgstore keeps chat messages and the per-chat sequence counters in
// PostgreSQL: it writes a batch of messages in one transaction, numbering
// each chat's new messages contiguously, and reads history pages.
package msgstore

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"math"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/communications/communications/services/history/internal/history"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations returns the history service's SQL migrations.
func Migrations() fs.FS {
	sub, _ := fs.Sub(migrations, "migrations")
	return sub
}

// MigrationTable is the goose version table of the history service.
const MigrationTable = "history_schema_version"

// Store implements the writer's batch store and history.PageStore.
type Store struct{ pool *pgxpool.Pool }

// New returns a Store on pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

type msgKey struct {
	chatID, senderID int64
	clientMsgID      string
}

func keyOf(m history.Message) msgKey { return msgKey{m.ChatID, m.SenderID, m.ClientMsgID} }

// StoreBatch stores msgs, given in stream order, in one transaction and
// returns, for each of them, the message as stored. A message whose chat,
// sender and client message id are already stored, or appear earlier in
// msgs, is not stored again and gets the original back (Duplicate set).
// The others get their chat's next sequence numbers, in the order of msgs.
//
// The transaction locks the counter rows of the batch's chats in ascending
// chat id order, so concurrent writers serialise per chat and never
// deadlock; under the lock, a key stored by another writer is visible.
func (s *Store) StoreBatch(ctx context.Context, msgs []history.Message) ([]history.Stored, error) {
	out := make([]history.Stored, len(msgs))
	if len(msgs) == 0 {
		return out, nil
	}
	// Collapse duplicates inside the batch: first[k] is the index of the
	// first message with key k; later ones point at it.
	first := make(map[msgKey]int, len(msgs))
	origin := make([]int, len(msgs))
	var chats []int64
	var keyChats, keySenders []int64
	var keyClients []string
	for i, m := range msgs {
		k := keyOf(m)
		if j, ok := first[k]; ok {
			origin[i] = j
			continue
		}
		first[k], origin[i] = i, i
		chats = append(chats, m.ChatID)
		keyChats, keySenders, keyClients = append(keyChats, k.chatID), append(keySenders, k.senderID), append(keyClients, k.clientMsgID)
	}
	slices.Sort(chats)
	chats = slices.Compact(chats)

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("store batch: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	// One round trip: create missing counters, lock them in chat order,
	// and find the keys already stored.
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO chat_counters (chat_id)
		SELECT c FROM unnest($1::bigint[]) AS c ORDER BY c
		ON CONFLICT DO NOTHING`, chats)
	lastSeq := make(map[int64]int64, len(chats))
	b.Queue(`SELECT chat_id, last_seq FROM chat_counters
		WHERE chat_id = ANY($1::bigint[]) ORDER BY chat_id FOR UPDATE`, chats).
		Query(func(rows pgx.Rows) error {
			var chatID, seq int64
			_, err := pgx.ForEachRow(rows, []any{&chatID, &seq}, func() error {
				lastSeq[chatID] = seq
				return nil
			})
			return err
		})
	stored := make(map[msgKey]history.Message)
	b.Queue(`SELECT m.chat_id, m.seq, m.sender_id, m.sender, m.client_msg_id, m.text, m.sent_at
		FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS k(chat_id, sender_id, client_msg_id)
		JOIN messages m ON m.chat_id = k.chat_id AND m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id`,
		keyChats, keySenders, keyClients).
		Query(func(rows pgx.Rows) error {
			var m history.Message
			_, err := pgx.ForEachRow(rows, []any{&m.ChatID, &m.Seq, &m.SenderID, &m.Sender, &m.ClientMsgID, &m.Text, &m.SentAt}, func() error {
				stored[keyOf(m)] = m
				return nil
			})
			return err
		})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("store batch: lock counters: %w", err)
	}

	// Number the new messages, each chat from its counter, in batch order.
	n := len(msgs) - len(stored)
	ins := struct {
		chats, seqs, senderIDs []int64
		senders, clients, text []string
		sentAt                 []time.Time
	}{
		make([]int64, 0, n), make([]int64, 0, n), make([]int64, 0, n),
		make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]time.Time, 0, n),
	}
	for i, m := range msgs {
		if j := origin[i]; j != i {
			out[i] = history.Stored{Message: out[j].Message, Duplicate: true}
			continue
		}
		if orig, ok := stored[keyOf(m)]; ok {
			out[i] = history.Stored{Message: orig, Duplicate: true}
			continue
		}
		last, ok := lastSeq[m.ChatID]
		if !ok {
			return nil, fmt.Errorf("store batch: counter of chat %d not locked", m.ChatID)
		}
		m.Seq = last + 1
		lastSeq[m.ChatID] = m.Seq
		out[i] = history.Stored{Message: m}
		ins.chats, ins.seqs, ins.senderIDs = append(ins.chats, m.ChatID), append(ins.seqs, m.Seq), append(ins.senderIDs, m.SenderID)
		ins.senders, ins.clients, ins.text = append(ins.senders, m.Sender), append(ins.clients, m.ClientMsgID), append(ins.text, m.Text)
		ins.sentAt = append(ins.sentAt, m.SentAt)
	}
	if len(ins.chats) == 0 {
		// Only duplicates: nothing to write.
		return out, nil
	}
	counterChats := make([]int64, 0, len(lastSeq))
	counterSeqs := make([]int64, 0, len(lastSeq))
	for _, c := range chats {
		counterChats, counterSeqs = append(counterChats, c), append(counterSeqs, lastSeq[c])
	}

	b = &pgx.Batch{}
	b.Queue(`UPDATE chat_counters c SET last_seq = u.last_seq
		FROM unnest($1::bigint[], $2::bigint[]) AS u(chat_id, last_seq)
		WHERE c.chat_id = u.chat_id AND c.last_seq <> u.last_seq`, counterChats, counterSeqs)
	b.Queue(`INSERT INTO messages (chat_id, seq, sender_id, sender, client_msg_id, text, sent_at)
		SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])`,
		ins.chats, ins.seqs, ins.senderIDs, ins.senders, ins.clients, ins.text, ins.sentAt)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("store batch: insert: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("store batch: commit: %w", err)
	}
	return out, nil
}

// Page implements history.PageStore with a keyset query on the primary key.
func (s *Store) Page(ctx context.Context, chatID, beforeSeq int64, limit int) ([]history.Message, error) {
	if beforeSeq <= 0 {
		beforeSeq = math.MaxInt64
	}
	rows, err := s.pool.Query(ctx, `
		SELECT chat_id, seq, sender_id, sender, client_msg_id, text, sent_at
		FROM messages WHERE chat_id = $1 AND seq < $2
		ORDER BY seq DESC LIMIT $3`, chatID, beforeSeq, limit)
	msgs, err := scanMessages(rows, err, limit)
	if err != nil {
		return nil, fmt.Errorf("select page: %w", err)
	}
	slices.Reverse(msgs)
	return msgs, nil
}

// scanMessages reads the rows of a page query (or returns its error).
func scanMessages(rows pgx.Rows, err error, limit int) ([]history.Message, error) {
	if err != nil {
		return nil, err
	}
	msgs := make([]history.Message, 0, limit)
	var m history.Message
	_, err = pgx.ForEachRow(rows, []any{&m.ChatID, &m.Seq, &m.SenderID, &m.Sender, &m.ClientMsgID, &m.Text, &m.SentAt}, func() error {
		msgs = append(msgs, m)
		return nil
	})
	return msgs, err
}

// After returns at most limit messages of chat with seq > afterSeq, oldest
// first: a keyset read on the primary key (chat_id, seq).
func (s *Store) After(ctx context.Context, chatID, afterSeq int64, limit int) ([]history.Message, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT chat_id, seq, sender_id, sender, client_msg_id, text, sent_at
		FROM messages WHERE chat_id = $1 AND seq > $2
		ORDER BY seq LIMIT $3`, chatID, afterSeq, limit)
	msgs, err := scanMessages(rows, err, limit)
	if err != nil {
		return nil, fmt.Errorf("select page after: %w", err)
	}
	return msgs, nil
}

// Latest returns the newest stored sequence of each chat that has one.
func (s *Store) Latest(ctx context.Context, chatIDs []int64) (map[int64]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT chat_id, last_seq FROM chat_counters WHERE chat_id = ANY($1) AND last_seq > 0`, chatIDs)
	if err != nil {
		return nil, fmt.Errorf("select latest: %w", err)
	}
	out := make(map[int64]int64, len(chatIDs))
	var id, seq int64
	_, err = pgx.ForEachRow(rows, []any{&id, &seq}, func() error {
		out[id] = seq
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("select latest: %w", err)
	}
	return out, nil
}

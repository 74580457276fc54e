// Package msgstore keeps chat messages, their edits and deletions, and the
// per-chat sequence counters in PostgreSQL: it writes a batch of entries in
// one transaction, numbering each chat's new entries contiguously and
// applying edits and deletions to their messages, and reads history pages.
package msgstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
type Store struct {
	pool *pgxpool.Pool
	// lookups counts the batches stored again with the lookup of their
	// keys (for tests).
	lookups atomic.Int64
}

// New returns a Store on pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// pgUniqueViolation is PostgreSQL's SQLSTATE for a unique key refusing a row.
const pgUniqueViolation = "23505"

type msgKey struct {
	chatID, senderID int64
	clientMsgID      string
}

func keyOf(m history.Message) msgKey { return msgKey{m.ChatID, m.SenderID, m.ClientMsgID} }

// chatSeq names one entry of one chat.
type chatSeq struct{ chatID, seq int64 }

// columns are the columns of an entry, in the order row.dest scans them.
const columns = `chat_id, seq, kind, target_seq, sender_id, sender, client_msg_id, text, sent_at, edited_at, deleted`

// row scans one entry.
type row struct {
	m        history.Message
	kind     string
	target   *int64
	editedAt *time.Time
}

func (r *row) dest() []any {
	return []any{&r.m.ChatID, &r.m.Seq, &r.kind, &r.target, &r.m.SenderID, &r.m.Sender, &r.m.ClientMsgID,
		&r.m.Text, &r.m.SentAt, &r.editedAt, &r.m.Deleted}
}

func (r *row) message() history.Message {
	m := r.m
	m.Kind, m.TargetSeq, m.EditedAt = history.KindMessage, 0, time.Time{}
	if r.kind != dbKindMessage {
		m.Kind = history.Kind(r.kind)
	}
	if r.target != nil {
		m.TargetSeq = *r.target
	}
	if r.editedAt != nil {
		m.EditedAt = *r.editedAt
	}
	return m
}

// dbKindMessage is the kind column of a message (history.KindMessage is
// empty, as in the protocol).
const dbKindMessage = "message"

// checkChange decides whether change may apply to target (its current
// state; nil when there is no entry at its sequence).
func checkChange(change history.Message, target *history.Message) error {
	switch {
	case target == nil || target.Kind != history.KindMessage:
		return history.ErrTargetNotFound
	case target.SenderID != change.SenderID:
		return history.ErrNotSender
	case target.Deleted:
		return history.ErrTargetDeleted
	}
	return nil
}

// StoreBatch stores msgs, given in stream order, in one transaction and
// returns, for each of them, the entry as stored. An entry whose chat,
// sender and client message id are already stored, or appear earlier in
// msgs, is not stored again and gets the original back (Duplicate set).
// An edit or deletion whose target is not a message of the chat, was sent
// by another user or is deleted (also by an earlier entry of msgs) is not
// stored and spends no number (Rejected set). The others get their chat's
// next sequence numbers, in the order of msgs; an edit changes its
// target's text and edited_at, a deletion marks the target deleted and
// clears its text and the text of its edits.
//
// The transaction locks the counter rows of the batch's chats in ascending
// chat id order, so concurrent writers serialise per chat and never
// deadlock; under the lock, entries stored by another writer are visible.
func (s *Store) StoreBatch(ctx context.Context, msgs []history.Message) ([]history.Stored, error) {
	return s.StoreBatchAt(ctx, msgs, history.Advance{})
}

// StoreBatchAt is StoreBatch moving the writer's stream position with the
// batch (adv.Stream empty: no position): first thing in the transaction,
// the position row is changed from adv.From to adv.To under adv.Epoch, and
// when it no longer holds adv.From (another writer stored meanwhile; its
// row lock makes this one wait for that commit) the batch fails with
// history.ErrPositionMoved and nothing is stored.
func (s *Store) StoreBatchAt(ctx context.Context, msgs []history.Message, adv history.Advance) ([]history.Stored, error) {
	if len(msgs) == 0 && adv.Stream == "" {
		return make([]history.Stored, 0), nil
	}
	p := prepare(msgs)
	// Most batches hold no message stored before (a retry within the
	// stream's duplicate window never reaches the writer), so the batch
	// is first stored without looking its keys up: the unique key then
	// refuses a message stored before, the transaction is rolled back
	// and the batch stored again with the lookup. A change that would be
	// rejected may be a retry of one stored before (a deletion's retry
	// finds its target deleted), so it is decided with the lookup too.
	out, err := s.storeTx(ctx, p, adv, false)
	if errors.Is(err, errNeedsLookup) {
		s.lookups.Add(1)
		out, err = s.storeTx(ctx, p, adv, true)
	}
	return out, err
}

// errNeedsLookup is storeTx's answer, without the lookup, when the unique
// key refused a message of the batch stored before, or a change of the
// batch would be rejected.
var errNeedsLookup = errors.New("store batch: a message may have been stored before")

// clientMsgKey is the unique key on (chat, sender, client message id).
const clientMsgKey = "messages_client_msg_key"

// prepared is a batch with the duplicates inside it collapsed.
type prepared struct {
	msgs []history.Message
	// origin[i] is the index of the first message with msgs[i]'s key.
	origin []int
	// chats are the batch's chats, ascending.
	chats                []int64
	keyChats, keySenders []int64
	keyClients           []string
	tgtChats, tgtSeqs    []int64
}

func prepare(msgs []history.Message) *prepared {
	p := &prepared{msgs: msgs, origin: make([]int, len(msgs))}
	first := make(map[msgKey]int, len(msgs))
	for i, m := range msgs {
		k := keyOf(m)
		if j, ok := first[k]; ok {
			p.origin[i] = j
			continue
		}
		first[k], p.origin[i] = i, i
		p.chats = append(p.chats, m.ChatID)
		p.keyChats, p.keySenders, p.keyClients = append(p.keyChats, k.chatID), append(p.keySenders, k.senderID), append(p.keyClients, k.clientMsgID)
		if m.Kind != history.KindMessage {
			p.tgtChats, p.tgtSeqs = append(p.tgtChats, m.ChatID), append(p.tgtSeqs, m.TargetSeq)
		}
	}
	slices.Sort(p.chats)
	p.chats = slices.Compact(p.chats)
	return p
}

// storeTx stores p in one transaction; with lookup, it first finds the
// batch's keys already stored, without it a key stored before or a
// rejected change fails the transaction with errNeedsLookup.
func (s *Store) storeTx(ctx context.Context, p *prepared, adv history.Advance, lookup bool) ([]history.Stored, error) {
	msgs, origin, chats := p.msgs, p.origin, p.chats
	out := make([]history.Stored, len(msgs))
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("store batch: acquire: %w", err)
	}
	defer conn.Release()
	// BEGIN travels in the first pipeline: one round trip fewer than
	// pgx's Begin. COMMIT goes on its own once every statement has
	// succeeded, so that a batch given up on (its context ended) while a
	// statement still runs is not committed behind the writer's back.
	// Unless committed, the transaction is rolled back here (a
	// connection still in one when released is closed by the pool).
	committed := false
	defer func() {
		if !committed {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			_, _ = conn.Exec(ctx, "ROLLBACK")
		}
	}()

	// One round trip: move the position, create missing counters, lock
	// them in chat order, find the keys already stored and the targets of
	// edits and deletions.
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	if adv.Stream != "" {
		b.Queue(`UPDATE writer_positions SET last_seq = $4
			WHERE stream = $1 AND epoch = $2 AND last_seq = $3`, adv.Stream, adv.Epoch, int64(adv.From), int64(adv.To)).
			Exec(func(ct pgconn.CommandTag) error {
				if ct.RowsAffected() != 1 {
					return history.ErrPositionMoved
				}
				return nil
			})
	}
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
	if lookup {
		b.Queue(`SELECT `+prefixed("m.", columns)+`
			FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS k(chat_id, sender_id, client_msg_id)
			JOIN messages m ON m.chat_id = k.chat_id AND m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id`,
			p.keyChats, p.keySenders, p.keyClients).
			Query(func(rows pgx.Rows) error {
				var r row
				_, err := pgx.ForEachRow(rows, r.dest(), func() error {
					m := r.message()
					stored[keyOf(m)] = m
					return nil
				})
				return err
			})
	}
	// The current state of every target: loaded ones, then the batch's
	// new messages; the batch's changes apply to it in order. Targets
	// belong to the locked chats, so no other writer changes them.
	state := make(map[chatSeq]*history.Message)
	loaded := make(map[chatSeq]bool)
	if len(p.tgtChats) > 0 {
		b.Queue(`SELECT `+prefixed("m.", columns)+`
			FROM unnest($1::bigint[], $2::bigint[]) AS t(chat_id, seq)
			JOIN messages m ON m.chat_id = t.chat_id AND m.seq = t.seq`, p.tgtChats, p.tgtSeqs).
			Query(func(rows pgx.Rows) error {
				var r row
				_, err := pgx.ForEachRow(rows, r.dest(), func() error {
					m := r.message()
					k := chatSeq{m.ChatID, m.Seq}
					state[k], loaded[k] = &m, true
					return nil
				})
				return err
			})
	}
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("store batch: lock counters: %w", err)
	}

	// Number the new entries, each chat from its counter, in batch order,
	// and apply the changes to their targets.
	var entries []*history.Message
	changed := make(map[chatSeq]bool) // loaded targets whose row changes
	var deleted []chatSeq             // targets deleted by the batch
	for i, m := range msgs {
		if j := origin[i]; j != i {
			if out[j].Rejected != nil {
				out[i] = out[j]
				continue
			}
			out[i] = history.Stored{Message: out[j].Message, Duplicate: true}
			continue
		}
		if orig, ok := stored[keyOf(m)]; ok {
			out[i] = history.Stored{Message: orig, Duplicate: true}
			continue
		}
		var target *history.Message
		tk := chatSeq{m.ChatID, m.TargetSeq}
		if m.Kind != history.KindMessage {
			target = state[tk]
			if err := checkChange(m, target); err != nil {
				if !lookup {
					return nil, errNeedsLookup
				}
				out[i] = history.Stored{Message: m, Rejected: err}
				continue
			}
		}
		last, ok := lastSeq[m.ChatID]
		if !ok {
			return nil, fmt.Errorf("store batch: counter of chat %d not locked", m.ChatID)
		}
		m.Seq = last + 1
		lastSeq[m.ChatID] = m.Seq
		out[i] = history.Stored{Message: m}
		e := m
		entries = append(entries, &e)
		switch m.Kind {
		case history.KindMessage:
			state[chatSeq{m.ChatID, m.Seq}] = &e
		case history.KindEdit:
			target.Text, target.EditedAt = m.Text, m.SentAt
		case history.KindDelete:
			target.Text, target.Deleted = "", true
			deleted = append(deleted, tk)
		}
		if target != nil && loaded[tk] {
			changed[tk] = true
		}
	}
	if len(entries) == 0 {
		// Only duplicates and rejected changes: nothing to write but the
		// position.
		if adv.Stream != "" {
			if err := commit(ctx, conn); err != nil {
				return nil, err
			}
			committed = true
		}
		return out, nil
	}
	counterChats := make([]int64, 0, len(lastSeq))
	counterSeqs := make([]int64, 0, len(lastSeq))
	for _, c := range chats {
		counterChats, counterSeqs = append(counterChats, c), append(counterSeqs, lastSeq[c])
	}

	// The entries go in with COPY, the rest in one pipeline after it.
	copied, err := conn.Conn().CopyFrom(ctx, pgx.Identifier{"messages"}, copyColumns, &entryRows{entries: entries})
	if err != nil {
		var pgErr *pgconn.PgError
		if !lookup && errors.As(err, &pgErr) && pgErr.Code == pgUniqueViolation && pgErr.ConstraintName == clientMsgKey {
			return nil, errNeedsLookup
		}
		return nil, fmt.Errorf("store batch: insert: %w", err)
	}
	if copied != int64(len(entries)) {
		return nil, fmt.Errorf("store batch: insert: %d rows copied of %d", copied, len(entries))
	}
	b = &pgx.Batch{}
	b.Queue(`UPDATE chat_counters c SET last_seq = u.last_seq
		FROM unnest($1::bigint[], $2::bigint[]) AS u(chat_id, last_seq)
		WHERE c.chat_id = u.chat_id AND c.last_seq <> u.last_seq`, counterChats, counterSeqs)
	if len(changed) > 0 {
		var upChats, upSeqs []int64
		var upText []string
		var upEdited []*time.Time
		var upDeleted []bool
		for k := range changed {
			t := state[k]
			upChats, upSeqs, upText = append(upChats, k.chatID), append(upSeqs, k.seq), append(upText, t.Text)
			upEdited, upDeleted = append(upEdited, timeOrNil(t.EditedAt)), append(upDeleted, t.Deleted)
		}
		b.Queue(`UPDATE messages m SET text = u.text, edited_at = u.edited_at, deleted = u.deleted
			FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[], $5::boolean[])
				AS u(chat_id, seq, text, edited_at, deleted)
			WHERE m.chat_id = u.chat_id AND m.seq = u.seq`, upChats, upSeqs, upText, upEdited, upDeleted)
	}
	if len(deleted) > 0 {
		// A deletion takes the text out of the message's edits too.
		delChats, delSeqs := make([]int64, len(deleted)), make([]int64, len(deleted))
		for i, k := range deleted {
			delChats[i], delSeqs[i] = k.chatID, k.seq
		}
		b.Queue(clearEditsSQL, delChats, delSeqs)
	}
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("store batch: update: %w", err)
	}
	if err := commit(ctx, conn); err != nil {
		return nil, err
	}
	committed = true
	return out, nil
}

// rollbackTimeout bounds the ROLLBACK of a failed batch, which runs even
// when the batch's context has ended.
const rollbackTimeout = 5 * time.Second

// commit commits conn's transaction; one that had failed would answer
// COMMIT with ROLLBACK, not an error.
func commit(ctx context.Context, conn *pgxpool.Conn) error {
	ct, err := conn.Exec(ctx, "COMMIT")
	if err != nil {
		return fmt.Errorf("store batch: commit: %w", err)
	}
	if ct.String() != "COMMIT" {
		return fmt.Errorf("store batch: commit: the transaction ended with %s", ct)
	}
	return nil
}

// copyColumns are the columns entryRows gives, in its order; stored_at
// takes its default.
var copyColumns = []string{"chat_id", "seq", "kind", "target_seq", "sender_id", "sender", "client_msg_id", "text", "sent_at", "edited_at", "deleted"}

// kindValues are the kind column's values, boxed once.
var kindValues = map[history.Kind]any{
	history.KindMessage: dbKindMessage,
	history.KindEdit:    string(history.KindEdit),
	history.KindDelete:  string(history.KindDelete),
}

// entryRows is the pgx.CopyFromSource of numbered entries. Values
// reuses one slice: pgx (v5.12, copy_from.go buildCopyBuf) encodes each
// row before it asks for the next, and the store tests would see every
// row turn into the last one if that changed.
type entryRows struct {
	entries []*history.Message
	i       int
	vals    [11]any
}

func (r *entryRows) Next() bool {
	r.i++
	return r.i <= len(r.entries)
}

func (r *entryRows) Values() ([]any, error) {
	e := r.entries[r.i-1]
	kind, ok := kindValues[e.Kind]
	if !ok {
		// Unreachable: the writer decodes only the three kinds.
		return nil, fmt.Errorf("unknown kind %q", e.Kind)
	}
	var target, editedAt any // NULL unless set
	if e.TargetSeq != 0 {
		target = e.TargetSeq
	}
	if !e.EditedAt.IsZero() {
		editedAt = e.EditedAt
	}
	r.vals = [11]any{e.ChatID, e.Seq, kind, target, e.SenderID, e.Sender, e.ClientMsgID, e.Text, e.SentAt, editedAt, e.Deleted}
	return r.vals[:], nil
}

func (r *entryRows) Err() error { return nil }

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// prefixed qualifies each column of a column list with prefix.
func prefixed(prefix, cols string) string {
	parts := strings.Split(cols, ", ")
	for i, c := range parts {
		parts[i] = prefix + c
	}
	return strings.Join(parts, ", ")
}

// clearEditsSQL takes the text out of the edits of deleted messages
// ($1 chats, $2 their sequences), found through messages_edits_by_target.
const clearEditsSQL = `UPDATE messages m SET text = ''
	FROM unnest($1::bigint[], $2::bigint[]) AS d(chat_id, seq)
	WHERE m.chat_id = d.chat_id AND m.kind = 'edit' AND m.target_seq = d.seq AND m.seq > d.seq AND m.text <> ''`

// Page implements history.PageStore with a keyset query on the primary key.
func (s *Store) Page(ctx context.Context, chatID, beforeSeq int64, limit int) ([]history.Message, error) {
	if beforeSeq <= 0 {
		beforeSeq = math.MaxInt64
	}
	rows, err := s.pool.Query(ctx, `
		SELECT `+columns+`
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
	var r row
	_, err = pgx.ForEachRow(rows, r.dest(), func() error {
		msgs = append(msgs, r.message())
		return nil
	})
	return msgs, err
}

// After returns at most limit messages of chat with seq > afterSeq, oldest
// first: a keyset read on the primary key (chat_id, seq).
func (s *Store) After(ctx context.Context, chatID, afterSeq int64, limit int) ([]history.Message, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT `+columns+`
		FROM messages WHERE chat_id = $1 AND seq > $2
		ORDER BY seq LIMIT $3`, chatID, afterSeq, limit)
	msgs, err := scanMessages(rows, err, limit)
	if err != nil {
		return nil, fmt.Errorf("select page after: %w", err)
	}
	return msgs, nil
}

// Entry implements history.PageStore: the entry of chat at seq.
func (s *Store) Entry(ctx context.Context, chatID, seq int64) (history.Message, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+columns+` FROM messages WHERE chat_id = $1 AND seq = $2`, chatID, seq)
	return one(rows, err)
}

// BySender implements history.PageStore: the entry of chat that sender
// stored under clientMsgID (the unique key).
func (s *Store) BySender(ctx context.Context, chatID, senderID int64, clientMsgID string) (history.Message, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+columns+` FROM messages
		WHERE chat_id = $1 AND sender_id = $2 AND client_msg_id = $3`, chatID, senderID, clientMsgID)
	return one(rows, err)
}

// one reads the single row of rows, or history.ErrNotFound.
func one(rows pgx.Rows, err error) (history.Message, error) {
	msgs, err := scanMessages(rows, err, 1)
	switch {
	case err != nil:
		return history.Message{}, fmt.Errorf("select entry: %w", err)
	case len(msgs) == 0:
		return history.Message{}, history.ErrNotFound
	}
	return msgs[0], nil
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

// Position returns the last stream sequence stored from stream under epoch
// (the stream's creation time). A stream seen for the first time, or
// created again since (a later epoch), starts at firstSeq: the position is
// set to the sequence before it. An earlier epoch (a writer that read the
// stream before it was created again) changes nothing; its batches then
// fail with history.ErrPositionMoved.
func (s *Store) Position(ctx context.Context, stream string, epoch int64, firstSeq uint64) (uint64, error) {
	start := int64(max(firstSeq, 1) - 1)
	var last int64
	// One upsert that always returns the row: under concurrent calls the
	// later one waits for the earlier one's row and reads it.
	err := s.pool.QueryRow(ctx, `INSERT INTO writer_positions AS p (stream, epoch, last_seq) VALUES ($1, $2, $3)
		ON CONFLICT (stream) DO UPDATE SET epoch = GREATEST(p.epoch, EXCLUDED.epoch),
			last_seq = CASE WHEN EXCLUDED.epoch > p.epoch THEN EXCLUDED.last_seq ELSE p.last_seq END
		RETURNING last_seq`,
		stream, epoch, start).Scan(&last)
	if err != nil {
		return 0, fmt.Errorf("writer position of %s: %w", stream, err)
	}
	return uint64(last), nil
}

// StoredPosition returns the last stream sequence stored from stream, and
// false when the writer has not started on it.
func (s *Store) StoredPosition(ctx context.Context, stream string) (uint64, bool, error) {
	var last int64
	err := s.pool.QueryRow(ctx, `SELECT last_seq FROM writer_positions WHERE stream = $1`, stream).Scan(&last)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("writer position of %s: %w", stream, err)
	}
	return uint64(last), true, nil
}

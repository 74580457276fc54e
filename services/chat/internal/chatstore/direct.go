package chatstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/communications/communications/services/chat/internal/chats"
)

// DirectChat returns the direct chat of a and b, creating it with both as
// members when there is none; created tells which. The unique index on the
// ordered pair decides between concurrent starts: the loser's insert waits
// for the winner's commit, does nothing, and reads the winner's chat.
func (s *Store) DirectChat(ctx context.Context, a, b chats.Member) (chats.Chat, bool, error) {
	if a.ID == b.ID {
		return chats.Chat{}, false, fmt.Errorf("direct chat of user %d with itself", a.ID)
	}
	low, high := a, b
	if low.ID > high.ID {
		low, high = high, low
	}
	var (
		chat    chats.Chat
		created bool
	)
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		created = false
		var id int64
		err := tx.QueryRow(ctx, `
			INSERT INTO chats (name, direct, direct_low, direct_high) VALUES ('', true, $1, $2)
			ON CONFLICT (direct_low, direct_high) WHERE direct DO NOTHING
			RETURNING id`, low.ID, high.ID).Scan(&id)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			// It exists (committed, since the insert waited for it).
			err := tx.QueryRow(ctx, `SELECT id FROM chats WHERE direct AND direct_low = $1 AND direct_high = $2`,
				low.ID, high.ID).Scan(&id)
			if err != nil {
				return fmt.Errorf("select direct chat: %w", err)
			}
		case err != nil:
			return fmt.Errorf("insert direct chat: %w", err)
		default:
			created = true
			if err := addMembers(ctx, tx, id, []chats.Member{low, high}); err != nil {
				return err
			}
		}
		chat, err = chatWithMembers(ctx, tx, id)
		return err
	})
	if err != nil {
		return chats.Chat{}, false, fmt.Errorf("direct chat of users %d and %d: %w", low.ID, high.ID, err)
	}
	return chat, created, nil
}

// ReadPositions returns the user's read position in each chat that has
// one.
func (s *Store) ReadPositions(ctx context.Context, userID int64) (map[int64]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT chat_id, seq FROM read_positions WHERE user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("select read positions: %w", err)
	}
	out := map[int64]int64{}
	var chat, seq int64
	_, err = pgx.ForEachRow(rows, []any{&chat, &seq}, func() error {
		out[chat] = seq
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("select read positions: %w", err)
	}
	return out, nil
}

// MoveReadPosition moves the user's read position in the chat forward to
// seq. A position already at or beyond seq stays: moved is false and
// stored is the position kept. A chat that does not exist is
// chats.ErrChatNotFound.
func (s *Store) MoveReadPosition(ctx context.Context, userID, chatID, seq int64) (stored int64, moved bool, err error) {
	err = s.pool.QueryRow(ctx, `
		INSERT INTO read_positions (user_id, chat_id, seq) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, chat_id) DO UPDATE SET seq = excluded.seq
		WHERE read_positions.seq < excluded.seq
		RETURNING seq`, userID, chatID, seq).Scan(&stored)
	switch {
	case err == nil:
		return stored, true, nil
	case !errors.Is(err, pgx.ErrNoRows):
		if isForeignKeyViolation(err) {
			return 0, false, chats.ErrChatNotFound
		}
		return 0, false, fmt.Errorf("move read position: %w", err)
	}
	// Not moved: the row exists (a new statement sees what the conflict
	// waited for).
	err = s.pool.QueryRow(ctx, `SELECT seq FROM read_positions WHERE user_id = $1 AND chat_id = $2`, userID, chatID).Scan(&stored)
	if err != nil {
		return 0, false, fmt.Errorf("select read position: %w", err)
	}
	return stored, false, nil
}

// Package chatstore keeps chats and memberships in PostgreSQL.
package chatstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/communications/communications/services/chat/internal/chats"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations returns the chat service's SQL migrations.
func Migrations() fs.FS {
	sub, _ := fs.Sub(migrations, "migrations")
	return sub
}

// MigrationTable is the goose version table of the chat service.
const MigrationTable = "chat_schema_version"

// Store implements chats.Store.
type Store struct{ pool *pgxpool.Pool }

// New returns a Store on pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Chat returns a chat by id.
func (s *Store) Chat(ctx context.Context, id int64) (chats.Chat, error) {
	var c chats.Chat
	err := s.pool.QueryRow(ctx, `SELECT id, name, everyone FROM chats WHERE id = $1`, id).Scan(&c.ID, &c.Name, &c.Everyone)
	if errors.Is(err, pgx.ErrNoRows) {
		return chats.Chat{}, chats.ErrChatNotFound
	}
	if err != nil {
		return chats.Chat{}, fmt.Errorf("select chat: %w", err)
	}
	return c, nil
}

// IsMember reports explicit membership.
func (s *Store) IsMember(ctx context.Context, chatID, userID int64) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2)`, chatID, userID).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("select membership: %w", err)
	}
	return ok, nil
}

// UserChats lists a user's chats.
func (s *Store) UserChats(ctx context.Context, userID int64) ([]int64, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id FROM chats WHERE everyone
		UNION
		SELECT chat_id FROM chat_members WHERE user_id = $1
		ORDER BY 1`, userID)
	if err != nil {
		return nil, fmt.Errorf("select user chats: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("select user chats: %w", err)
	}
	return ids, nil
}

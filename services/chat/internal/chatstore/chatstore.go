// Package chatstore keeps chats and memberships in PostgreSQL.
package chatstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

// nameIndex is the unique index on lower(name) (migration 00001).
const nameIndex = "chats_name_lower_key"

// PostgreSQL's SQLSTATEs for a unique index conflict and a missing
// referenced row.
const (
	uniqueViolation     = "23505"
	foreignKeyViolation = "23503"
)

// Store implements chats.Store.
type Store struct{ pool *pgxpool.Pool }

// New returns a Store on pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Chat returns a chat by id, without its members.
func (s *Store) Chat(ctx context.Context, id int64) (chats.Chat, error) {
	var c chats.Chat
	err := s.pool.QueryRow(ctx, `
		SELECT id, name, description, coalesce(creator_id, 0), everyone, direct, created_at
		FROM chats WHERE id = $1`, id).Scan(&c.ID, &c.Name, &c.Description, &c.CreatorID, &c.Everyone, &c.Direct, &c.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return chats.Chat{}, chats.ErrChatNotFound
	}
	if err != nil {
		return chats.Chat{}, fmt.Errorf("select chat: %w", err)
	}
	c.CreatedAt = c.CreatedAt.UTC()
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

// InChat implements chats.Store in one query on the primary keys.
func (s *Store) InChat(ctx context.Context, chatID, userID int64) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `
		SELECT c.everyone OR EXISTS (SELECT 1 FROM chat_members m WHERE m.chat_id = c.id AND m.user_id = $2)
		FROM chats c WHERE c.id = $1`, chatID, userID).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, chats.ErrChatNotFound
	}
	if err != nil {
		return false, fmt.Errorf("select membership: %w", err)
	}
	return ok, nil
}

// userChatsSQL lists the ids of user $1's chats: the "everyone" chats
// (through their partial index, chats_everyone) and the user's rows of
// chat_members (through chat_members_user_idx).
const userChatsSQL = `
		SELECT id FROM chats WHERE everyone
		UNION
		SELECT chat_id FROM chat_members WHERE user_id = $1
		ORDER BY 1`

// UserChats lists a user's chats.
func (s *Store) UserChats(ctx context.Context, userID int64) ([]int64, error) {
	rows, err := s.pool.Query(ctx, userChatsSQL, userID)
	if err != nil {
		return nil, fmt.Errorf("select user chats: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("select user chats: %w", err)
	}
	return ids, nil
}

// selectChats reads chats with their members in one statement (one
// snapshot), members ordered by username regardless of letter case. The
// caller appends the WHERE clause over c and the ORDER BY.
const selectChats = `
	SELECT c.id, c.name, c.description, coalesce(c.creator_id, 0), c.everyone, c.direct, c.created_at,
	       coalesce(m.ids, '{}'), coalesce(m.names, '{}')
	FROM chats c
	CROSS JOIN LATERAL (
	    SELECT array_agg(user_id ORDER BY lower(username), user_id) AS ids,
	           array_agg(username ORDER BY lower(username), user_id) AS names
	    FROM chat_members WHERE chat_id = c.id
	) m
`

func queryChats(ctx context.Context, q querier, where string, args ...any) ([]chats.Chat, error) {
	rows, err := q.Query(ctx, selectChats+where, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (chats.Chat, error) {
		var (
			c     chats.Chat
			ids   []int64
			names []string
		)
		if err := row.Scan(&c.ID, &c.Name, &c.Description, &c.CreatorID, &c.Everyone, &c.Direct, &c.CreatedAt, &ids, &names); err != nil {
			return chats.Chat{}, err
		}
		c.CreatedAt = c.CreatedAt.UTC()
		if len(ids) != len(names) {
			return chats.Chat{}, fmt.Errorf("chat %d: %d member ids for %d names", c.ID, len(ids), len(names))
		}
		if len(ids) > 0 {
			c.Members = make([]chats.Member, len(ids))
			for i := range ids {
				c.Members[i] = chats.Member{ID: ids[i], Username: names[i]}
			}
		}
		return c, nil
	})
}

func chatWithMembers(ctx context.Context, q querier, id int64) (chats.Chat, error) {
	cs, err := queryChats(ctx, q, `WHERE c.id = $1`, id)
	if err != nil {
		return chats.Chat{}, fmt.Errorf("select chat: %w", err)
	}
	if len(cs) == 0 {
		return chats.Chat{}, chats.ErrChatNotFound
	}
	return cs[0], nil
}

// ChatWithMembers returns a chat and its members.
func (s *Store) ChatWithMembers(ctx context.Context, id int64) (chats.Chat, error) {
	return chatWithMembers(ctx, s.pool, id)
}

// listChatsWhere picks a user's chats ($1) for selectChats, "everyone"
// chats first, then by name regardless of letter case, a direct chat by
// the other member's name.
//
// The user's chats are named by a list of ids (the "everyone" chats and the
// user's rows of chat_members, by its index), not by a condition tested on
// every chat: with the condition, PostgreSQL estimated half of all chats,
// and past about 2,000 chats that estimate crossed jit_above_cost, so each
// call compiled the query (about 12 ms) and took 20 times longer.
const listChatsWhere = `
		WHERE c.id IN (SELECT id FROM chats WHERE everyone UNION ALL SELECT chat_id FROM chat_members WHERE user_id = $1)
		ORDER BY c.everyone DESC,
		    lower(CASE WHEN c.direct
		        THEN (SELECT username FROM chat_members WHERE chat_id = c.id AND user_id <> $1 LIMIT 1)
		        ELSE c.name END),
		    c.id`

// ListChats returns a user's chats with their members, "everyone" chats
// first, then by name regardless of letter case, a direct chat by the other
// member's name.
func (s *Store) ListChats(ctx context.Context, userID int64) ([]chats.Chat, error) {
	cs, err := queryChats(ctx, s.pool, listChatsWhere, userID)
	if err != nil {
		return nil, fmt.Errorf("select chats of user %d: %w", userID, err)
	}
	return cs, nil
}

// CreateChat inserts the chat and its members in one transaction.
func (s *Store) CreateChat(ctx context.Context, c chats.Chat) (chats.Chat, error) {
	var created chats.Chat
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		var (
			id int64
			at time.Time
		)
		err := tx.QueryRow(ctx, `
			INSERT INTO chats (name, description, creator_id) VALUES ($1, $2, $3)
			RETURNING id, created_at`, c.Name, c.Description, c.CreatorID).Scan(&id, &at)
		if err != nil {
			return nameTaken(err)
		}
		if err := addMembers(ctx, tx, id, c.Members); err != nil {
			return err
		}
		created, err = chatWithMembers(ctx, tx, id)
		return err
	})
	if err != nil {
		return chats.Chat{}, fmt.Errorf("insert chat: %w", err)
	}
	return created, nil
}

// UpdateChat locks the chat's row (FOR UPDATE: edits of one chat take
// turns), lets decide choose the change from the current state, applies it
// and returns the chat after it, all in one transaction.
func (s *Store) UpdateChat(ctx context.Context, id int64, decide func(chats.Chat) (chats.Change, error)) (chats.Chat, error) {
	var updated chats.Chat
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		var locked int64
		err := tx.QueryRow(ctx, `SELECT id FROM chats WHERE id = $1 FOR UPDATE`, id).Scan(&locked)
		if errors.Is(err, pgx.ErrNoRows) {
			return chats.ErrChatNotFound
		}
		if err != nil {
			return fmt.Errorf("lock chat: %w", err)
		}
		cur, err := chatWithMembers(ctx, tx, id)
		if err != nil {
			return err
		}
		ch, err := decide(cur)
		if err != nil {
			return err
		}
		if ch.Name == nil && ch.Description == nil && len(ch.Add) == 0 && len(ch.Remove) == 0 {
			updated = cur
			return nil
		}
		if ch.Name != nil || ch.Description != nil {
			_, err := tx.Exec(ctx, `
				UPDATE chats SET name = coalesce($2, name), description = coalesce($3, description)
				WHERE id = $1`, id, ch.Name, ch.Description)
			if err != nil {
				return nameTaken(err)
			}
		}
		if len(ch.Remove) > 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM chat_members WHERE chat_id = $1 AND user_id = ANY($2)`, id, ch.Remove); err != nil {
				return fmt.Errorf("delete members: %w", err)
			}
		}
		if err := addMembers(ctx, tx, id, ch.Add); err != nil {
			return err
		}
		updated, err = chatWithMembers(ctx, tx, id)
		return err
	})
	if err != nil {
		return chats.Chat{}, fmt.Errorf("update chat %d: %w", id, err)
	}
	return updated, nil
}

// addMembers inserts memberships; one that exists already is kept as it is.
func addMembers(ctx context.Context, tx pgx.Tx, chatID int64, members []chats.Member) error {
	if len(members) == 0 {
		return nil
	}
	ids := make([]int64, len(members))
	names := make([]string, len(members))
	for i, m := range members {
		ids[i], names[i] = m.ID, m.Username
	}
	_, err := tx.Exec(ctx, `
		INSERT INTO chat_members (chat_id, user_id, username)
		SELECT $1, u.id, u.name FROM unnest($2::bigint[], $3::text[]) AS u (id, name)
		ON CONFLICT (chat_id, user_id) DO NOTHING`, chatID, ids, names)
	if err != nil {
		return fmt.Errorf("insert members: %w", err)
	}
	return nil
}

// nameTaken turns a conflict on the name index into chats.ErrNameTaken.
func nameTaken(err error) error {
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok && pe.Code == uniqueViolation && pe.ConstraintName == nameIndex {
		return chats.ErrNameTaken
	}
	return fmt.Errorf("write chat: %w", err)
}

func isForeignKeyViolation(err error) bool {
	pe, ok := errors.AsType[*pgconn.PgError](err)
	return ok && pe.Code == foreignKeyViolation
}

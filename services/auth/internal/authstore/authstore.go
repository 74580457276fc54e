// Package authstore keeps the auth service's users and sessions in
// PostgreSQL.
package authstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/communications/communications/services/auth/internal/accounts"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations returns the auth service's SQL migrations.
func Migrations() fs.FS {
	sub, _ := fs.Sub(migrations, "migrations")
	return sub
}

// MigrationTable is the goose version table of the auth service.
const MigrationTable = "auth_schema_version"

// uniqueViolation is PostgreSQL's SQLSTATE for a unique constraint failure.
const uniqueViolation = "23505"

// Store implements accounts.Store.
type Store struct{ pool *pgxpool.Pool }

// New returns a Store on pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// CreateUser inserts a user.
func (s *Store) CreateUser(ctx context.Context, username, passwordHash string) (accounts.User, error) {
	u := accounts.User{Username: username}
	err := s.pool.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ($1, $2) RETURNING id`,
		username, passwordHash).Scan(&u.ID)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == uniqueViolation {
		return accounts.User{}, accounts.ErrUsernameTaken
	}
	if err != nil {
		return accounts.User{}, fmt.Errorf("insert user: %w", err)
	}
	return u, nil
}

// Credentials returns a user and password hash by username, ignoring case.
func (s *Store) Credentials(ctx context.Context, username string) (accounts.Credentials, error) {
	var c accounts.Credentials
	err := s.pool.QueryRow(ctx, `SELECT id, username, password_hash FROM users WHERE lower(username) = lower($1)`,
		username).Scan(&c.User.ID, &c.User.Username, &c.PasswordHash)
	if errors.Is(err, pgx.ErrNoRows) {
		return accounts.Credentials{}, accounts.ErrUserNotFound
	}
	if err != nil {
		return accounts.Credentials{}, fmt.Errorf("select user: %w", err)
	}
	return c, nil
}

// Users returns the users whose usernames equal one of usernames ignoring
// letter case, in one query on the index of lower(username). The usernames
// are ASCII (the accounts rules), so Go's and PostgreSQL's lowercase agree.
func (s *Store) Users(ctx context.Context, usernames []string) ([]accounts.User, error) {
	lower := make([]string, len(usernames))
	for i, name := range usernames {
		lower[i] = strings.ToLower(name)
	}
	rows, err := s.pool.Query(ctx, `SELECT id, username FROM users WHERE lower(username) = ANY($1)`, lower)
	if err != nil {
		return nil, fmt.Errorf("select users: %w", err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowToStructByPos[accounts.User])
	if err != nil {
		return nil, fmt.Errorf("select users: %w", err)
	}
	return users, nil
}

// CreateSession inserts a session.
func (s *Store) CreateSession(ctx context.Context, tokenHash []byte, userID int64, expiresAt time.Time) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, $3)`,
		tokenHash, userID, expiresAt)
	if err != nil {
		return fmt.Errorf("insert session: %w", err)
	}
	return nil
}

// Session returns a live session by token hash.
func (s *Store) Session(ctx context.Context, tokenHash []byte, now time.Time) (accounts.Session, error) {
	var sess accounts.Session
	err := s.pool.QueryRow(ctx, `
		SELECT u.id, u.username, s.expires_at
		FROM sessions s JOIN users u ON u.id = s.user_id
		WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2`,
		tokenHash, now).Scan(&sess.User.ID, &sess.User.Username, &sess.ExpiresAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return accounts.Session{}, accounts.ErrSessionNotFound
	}
	if err != nil {
		return accounts.Session{}, fmt.Errorf("select session: %w", err)
	}
	sess.ExpiresAt = sess.ExpiresAt.UTC()
	return sess, nil
}

// RevokeSession revokes a live session and returns its user's id. The
// statement commits on its own.
func (s *Store) RevokeSession(ctx context.Context, tokenHash []byte, now time.Time) (int64, error) {
	var userID int64
	err := s.pool.QueryRow(ctx, `
		UPDATE sessions SET revoked_at = $2
		WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2
		RETURNING user_id`, tokenHash, now).Scan(&userID)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, accounts.ErrSessionNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("revoke session: %w", err)
	}
	return userID, nil
}

// DeleteExpiredSessions deletes the sessions expired at now.
func (s *Store) DeleteExpiredSessions(ctx context.Context, now time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM sessions WHERE expires_at <= $1`, now)
	if err != nil {
		return 0, fmt.Errorf("delete expired sessions: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Package accounts is the auth service's domain: user accounts with argon2id
// password hashes, and sessions identified by random bearer tokens of which
// only a SHA-256 digest is stored. Passwords and tokens are never logged.
package accounts

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Sentinel errors of the domain.
var (
	ErrUsernameTaken   = errors.New("username is taken")
	ErrInvalidUsername = errors.New("invalid username")
	ErrInvalidPassword = errors.New("invalid password")
	// ErrBadCredentials is returned for an unknown user and for a wrong
	// password alike, so a caller cannot tell which.
	ErrBadCredentials = errors.New("wrong username or password")
	// ErrSessionNotFound is returned for an unknown, expired or revoked
	// session token.
	ErrSessionNotFound = errors.New("session not found")
	// ErrUserNotFound is returned by a Store for an unknown username.
	ErrUserNotFound = errors.New("user not found")
	// ErrUnknownUser is returned by LookupUsers for a name that is no
	// user's, wrapped in an error whose text is `unknown user "<name>"`.
	ErrUnknownUser = errors.New("unknown user")
	// ErrInvalidLookup is returned by LookupUsers for a request of no
	// names or of more than MaxLookupUsernames.
	ErrInvalidLookup = errors.New("invalid users lookup")
	// ErrOverloaded is returned when no password hashing slot freed up
	// before the request's deadline.
	ErrOverloaded = errors.New("too many password checks in progress")
)

// Username and password rules.
const (
	MinUsernameLen = 3   // characters
	MaxUsernameLen = 32  // characters
	MinPasswordLen = 8   // bytes
	MaxPasswordLen = 256 // bytes

	// MaxLookupUsernames is the most names one LookupUsers call resolves.
	MaxLookupUsernames = 100
)

// tokenBytes is the number of random bytes in a session token.
const tokenBytes = 32

// User is an account.
type User struct {
	ID       int64
	Username string // as typed at registration
}

// Session is an open session. Token is set only by Login: the service keeps
// no copy of it. ID names the session without revealing the token: the
// lowercase hex SHA-256 of the token, which is also what the store keeps.
type Session struct {
	ID        string
	Token     string
	User      User
	ExpiresAt time.Time
}

// Credentials are a user and their password hash (PHC string format).
type Credentials struct {
	User         User
	PasswordHash string
}

// Store keeps users and sessions. Session tokens reach it only as SHA-256
// digests.
type Store interface {
	// CreateUser inserts a user, or returns ErrUsernameTaken when the
	// username is taken in any letter case.
	CreateUser(ctx context.Context, username, passwordHash string) (User, error)
	// Credentials returns the user whose username equals username ignoring
	// letter case, or ErrUserNotFound.
	Credentials(ctx context.Context, username string) (Credentials, error)
	// Users returns, in any order, the users whose usernames equal one of
	// usernames ignoring letter case; unknown names are left out.
	Users(ctx context.Context, usernames []string) ([]User, error)
	// CreateSession stores a session.
	CreateSession(ctx context.Context, tokenHash []byte, userID int64, expiresAt time.Time) error
	// Session returns the session with tokenHash that is neither revoked
	// nor expired at now (its ID and Token left empty), or
	// ErrSessionNotFound.
	Session(ctx context.Context, tokenHash []byte, now time.Time) (Session, error)
	// RevokeSession marks the session with tokenHash revoked at now and
	// returns its user's id, or returns ErrSessionNotFound when no such
	// live session exists. The revocation is committed when it returns.
	RevokeSession(ctx context.Context, tokenHash []byte, now time.Time) (userID int64, err error)
	// DeleteExpiredSessions deletes the sessions expired at now
	// and returns how many.
	DeleteExpiredSessions(ctx context.Context, now time.Time) (int64, error)
}

// Events announces changes that other services must learn at once.
// Delivery is at most once.
type Events interface {
	// SessionRevoked announces that the session with id, of the user
	// with userID, was revoked.
	SessionRevoked(ctx context.Context, id string, userID int64) error
}

// Config configures a Service. The zero value gives the defaults.
type Config struct {
	// SessionTTL is how long a session lasts after login. Default 720h.
	SessionTTL time.Duration
	// MaxConcurrentHashes bounds the password hashes computed at once
	// (each takes about 19 MiB). Default 2.
	MaxConcurrentHashes int
}

// Service registers users and opens, checks and closes sessions.
type Service struct {
	store  Store
	events Events
	log    *slog.Logger
	ttl    time.Duration
	hashes chan struct{} // semaphore of password hashing slots
	params params
	// dummy is a hash checked for unknown users, so that their login
	// takes as long as a wrong password.
	dummy string
	now   func() time.Time
}

// NewService returns a Service on store that announces revoked sessions on
// events and logs the failures to announce them on log.
func NewService(store Store, events Events, log *slog.Logger, cfg Config) (*Service, error) {
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 720 * time.Hour
	}
	if cfg.MaxConcurrentHashes <= 0 {
		cfg.MaxConcurrentHashes = 2
	}
	s := &Service{
		store:  store,
		events: events,
		log:    log,
		ttl:    cfg.SessionTTL,
		hashes: make(chan struct{}, cfg.MaxConcurrentHashes),
		params: defaultParams,
		now:    time.Now,
	}
	dummy, err := hashPassword(rand.Text(), s.params)
	if err != nil {
		return nil, fmt.Errorf("new accounts service: %w", err)
	}
	s.dummy = dummy
	return s, nil
}

// Register creates an account. It returns an error wrapping
// ErrInvalidUsername or ErrInvalidPassword, whose text says what is wrong,
// or ErrUsernameTaken.
func (s *Service) Register(ctx context.Context, username, password string) (User, error) {
	if err := ValidateUsername(username); err != nil {
		return User{}, err
	}
	if err := ValidatePassword(password); err != nil {
		return User{}, err
	}
	var hash string
	err := s.withHashSlot(ctx, func() (err error) {
		hash, err = hashPassword(password, s.params)
		return err
	})
	if err != nil {
		return User{}, fmt.Errorf("register: %w", err)
	}
	u, err := s.store.CreateUser(ctx, username, hash)
	if errors.Is(err, ErrUsernameTaken) {
		return User{}, ErrUsernameTaken
	}
	if err != nil {
		return User{}, fmt.Errorf("register: %w", err)
	}
	return u, nil
}

// Login checks a password and opens a session. An unknown user and a wrong
// password both give ErrBadCredentials, after about the same time.
func (s *Service) Login(ctx context.Context, username, password string) (Session, error) {
	creds := Credentials{PasswordHash: s.dummy} // unknown user
	if ValidateUsername(username) == nil {
		c, err := s.store.Credentials(ctx, username)
		switch {
		case err == nil:
			creds = c
		case !errors.Is(err, ErrUserNotFound):
			return Session{}, fmt.Errorf("login: %w", err)
		}
	}
	if len(password) > MaxPasswordLen {
		// No account has such a password; do not hash a huge input.
		password = ""
		creds.User = User{}
	}
	var ok bool
	err := s.withHashSlot(ctx, func() (err error) {
		ok, err = verifyPassword(password, creds.PasswordHash)
		return err
	})
	if err != nil {
		return Session{}, fmt.Errorf("login: %w", err)
	}
	if !ok || creds.User.ID == 0 {
		return Session{}, ErrBadCredentials
	}

	raw := make([]byte, tokenBytes)
	if _, err := rand.Read(raw); err != nil {
		return Session{}, fmt.Errorf("login: token: %w", err)
	}
	token := base64.RawURLEncoding.EncodeToString(raw)
	hash := tokenHash(token)
	sess := Session{
		ID: sessionID(hash), Token: token, User: creds.User,
		ExpiresAt: s.now().Add(s.ttl).UTC().Truncate(time.Microsecond),
	}
	if err := s.store.CreateSession(ctx, hash, sess.User.ID, sess.ExpiresAt); err != nil {
		return Session{}, fmt.Errorf("login: %w", err)
	}
	return sess, nil
}

// Session returns the live session of token (its Token left empty), or
// ErrSessionNotFound.
func (s *Service) Session(ctx context.Context, token string) (Session, error) {
	if !wellFormedToken(token) {
		return Session{}, ErrSessionNotFound
	}
	hash := tokenHash(token)
	sess, err := s.store.Session(ctx, hash, s.now())
	if errors.Is(err, ErrSessionNotFound) {
		return Session{}, ErrSessionNotFound
	}
	if err != nil {
		return Session{}, fmt.Errorf("session: %w", err)
	}
	sess.ID = sessionID(hash)
	return sess, nil
}

// Logout revokes the session of token, or returns ErrSessionNotFound when it
// is unknown, expired or already revoked. Once the revocation is committed
// it is announced on the service's Events; a failure to announce it is
// logged, not returned, since every session lookup reads the store anyway.
func (s *Service) Logout(ctx context.Context, token string) error {
	if !wellFormedToken(token) {
		return ErrSessionNotFound
	}
	hash := tokenHash(token)
	userID, err := s.store.RevokeSession(ctx, hash, s.now())
	if errors.Is(err, ErrSessionNotFound) {
		return ErrSessionNotFound
	}
	if err != nil {
		return fmt.Errorf("logout: %w", err)
	}
	id := sessionID(hash)
	if err := s.events.SessionRevoked(ctx, id, userID); err != nil {
		s.log.WarnContext(ctx, "announce revoked session", "session_id", id, "user_id", userID, "err", err)
	}
	return nil
}

// LookupUsers returns one user per name, in the order of names, matching
// names regardless of letter case. It returns an error wrapping
// ErrInvalidLookup for no names or more than MaxLookupUsernames, and one
// wrapping ErrUnknownUser, whose text is `unknown user "<name>"`, for the
// first name that is no user's (an invalid username included).
func (s *Service) LookupUsers(ctx context.Context, names []string) ([]User, error) {
	if len(names) == 0 || len(names) > MaxLookupUsernames {
		return nil, fmt.Errorf("%w: give 1 to %d usernames, not %d", ErrInvalidLookup, MaxLookupUsernames, len(names))
	}
	// keys[i] is names[i] in lowercase, or "" when it is not a valid
	// username and so matches nobody. Usernames are ASCII, so ToLower
	// folds them as PostgreSQL's lower does.
	keys := make([]string, len(names))
	valid := make([]string, 0, len(names))
	for i, name := range names {
		if ValidateUsername(name) == nil {
			keys[i] = strings.ToLower(name)
			valid = append(valid, name)
		}
	}
	byKey := make(map[string]User, len(valid))
	if len(valid) > 0 {
		found, err := s.store.Users(ctx, valid)
		if err != nil {
			return nil, fmt.Errorf("lookup users: %w", err)
		}
		for _, u := range found {
			byKey[strings.ToLower(u.Username)] = u
		}
	}
	users := make([]User, len(names))
	for i, name := range names {
		u, ok := byKey[keys[i]]
		if !ok {
			return nil, fmt.Errorf("%w %q", ErrUnknownUser, name)
		}
		users[i] = u
	}
	return users, nil
}

// PruneSessions deletes expired sessions and returns how many.
func (s *Service) PruneSessions(ctx context.Context) (int64, error) {
	n, err := s.store.DeleteExpiredSessions(ctx, s.now())
	if err != nil {
		return 0, fmt.Errorf("prune sessions: %w", err)
	}
	return n, nil
}

// withHashSlot runs f while holding one of the password hashing slots,
// waiting for one until ctx ends.
func (s *Service) withHashSlot(ctx context.Context, f func() error) error {
	select {
	case s.hashes <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrOverloaded, ctx.Err())
	}
	defer func() { <-s.hashes }()
	return f()
}

// ValidateUsername checks the username rules: 3 to 32 characters, each an
// ASCII letter, digit, '_', '-' or '.'.
func ValidateUsername(name string) error {
	if len(name) < MinUsernameLen || len(name) > MaxUsernameLen {
		return fmt.Errorf("%w: must be %d to %d characters long", ErrInvalidUsername, MinUsernameLen, MaxUsernameLen)
	}
	for _, r := range name {
		ok := r == '_' || r == '-' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return fmt.Errorf("%w: may contain only letters a-z and A-Z, digits, '_', '-' and '.'", ErrInvalidUsername)
		}
	}
	return nil
}

// ValidatePassword checks the password rules: 8 to 256 bytes.
func ValidatePassword(password string) error {
	if len(password) < MinPasswordLen {
		return fmt.Errorf("%w: must be at least %d characters long", ErrInvalidPassword, MinPasswordLen)
	}
	if len(password) > MaxPasswordLen {
		return fmt.Errorf("%w: must be at most %d bytes long", ErrInvalidPassword, MaxPasswordLen)
	}
	return nil
}

// tokenHash is what the store keeps of a session token.
func tokenHash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// sessionID is the public name of the session whose token has hash.
func sessionID(hash []byte) string { return hex.EncodeToString(hash) }

// wellFormedToken reports whether token could have been issued by Login.
func wellFormedToken(token string) bool {
	if len(token) != base64.RawURLEncoding.EncodedLen(tokenBytes) {
		return false
	}
	_, err := base64.RawURLEncoding.Strict().DecodeString(token)
	return err == nil
}

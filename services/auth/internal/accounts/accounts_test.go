package accounts

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// memStore is an in-memory Store.
type memStore struct {
	mu       sync.Mutex
	users    []Credentials
	sessions map[string]*memSession // by token hash
}

type memSession struct {
	userID    int64
	expiresAt time.Time
	revoked   bool
}

func newMemStore() *memStore { return &memStore{sessions: map[string]*memSession{}} }

func (m *memStore) CreateUser(_ context.Context, username, hash string) (User, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.users {
		if strings.EqualFold(c.User.Username, username) {
			return User{}, ErrUsernameTaken
		}
	}
	u := User{ID: int64(len(m.users) + 1), Username: username}
	m.users = append(m.users, Credentials{User: u, PasswordHash: hash})
	return u, nil
}

func (m *memStore) Credentials(_ context.Context, username string) (Credentials, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.users {
		if strings.EqualFold(c.User.Username, username) {
			return c, nil
		}
	}
	return Credentials{}, ErrUserNotFound
}

func (m *memStore) CreateSession(_ context.Context, tokenHash []byte, userID int64, expiresAt time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sessions[string(tokenHash)] = &memSession{userID: userID, expiresAt: expiresAt}
	return nil
}

func (m *memStore) live(tokenHash []byte, now time.Time) (*memSession, bool) {
	s, ok := m.sessions[string(tokenHash)]
	return s, ok && !s.revoked && s.expiresAt.After(now)
}

func (m *memStore) Session(_ context.Context, tokenHash []byte, now time.Time) (Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.live(tokenHash, now)
	if !ok {
		return Session{}, ErrSessionNotFound
	}
	return Session{User: m.users[s.userID-1].User, ExpiresAt: s.expiresAt}, nil
}

func (m *memStore) RevokeSession(_ context.Context, tokenHash []byte, now time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.live(tokenHash, now)
	if !ok {
		return ErrSessionNotFound
	}
	s.revoked = true
	return nil
}

func (m *memStore) DeleteExpiredSessions(_ context.Context, now time.Time) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for k, s := range m.sessions {
		if !s.expiresAt.After(now) {
			delete(m.sessions, k)
			n++
		}
	}
	return n, nil
}

func newTestService(t *testing.T, cfg Config) (*Service, *memStore) {
	t.Helper()
	store := newMemStore()
	svc, err := NewService(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return svc, store
}

func TestValidateUsername(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		username string
		ok       bool
	}{
		{name: "letters", username: "alice", ok: true},
		{name: "all allowed characters", username: "Al_ice-2.0", ok: true},
		{name: "shortest", username: "abc", ok: true},
		{name: "longest", username: strings.Repeat("a", 32), ok: true},
		{name: "empty", username: ""},
		{name: "too short", username: "ab"},
		{name: "too long", username: strings.Repeat("a", 33)},
		{name: "space", username: "al ice"},
		{name: "at sign", username: "al@ice"},
		{name: "non-ASCII letter", username: "alicé"},
		{name: "wildcard", username: "al*ce"},
		{name: "NUL", username: "al\x00ce"},
		{name: "invalid UTF-8", username: "al\xffce"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := ValidateUsername(tc.username)
			if tc.ok && err != nil {
				t.Fatalf("ValidateUsername(%q) = %v, want nil", tc.username, err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalidUsername) {
				t.Fatalf("ValidateUsername(%q) = %v, want %v", tc.username, err, ErrInvalidUsername)
			}
		})
	}
}

func TestValidatePassword(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		password string
		ok       bool
	}{
		{name: "shortest", password: "12345678", ok: true},
		{name: "longest", password: strings.Repeat("p", 256), ok: true},
		{name: "multibyte counts bytes", password: strings.Repeat("é", 128), ok: true},
		{name: "empty"},
		{name: "too short", password: "1234567"},
		{name: "too long", password: strings.Repeat("p", 257)},
		{name: "multibyte too long", password: strings.Repeat("é", 129)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := ValidatePassword(tc.password)
			if tc.ok && err != nil {
				t.Fatalf("ValidatePassword(%d bytes) = %v, want nil", len(tc.password), err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalidPassword) {
				t.Fatalf("ValidatePassword(%d bytes) = %v, want %v", len(tc.password), err, ErrInvalidPassword)
			}
		})
	}
}

func TestRegisterAndLogin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	svc, store := newTestService(t, Config{SessionTTL: time.Hour})
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	svc.now = func() time.Time { return now }

	alice, err := svc.Register(ctx, "Alice", "password-1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(User{ID: 1, Username: "Alice"}, alice); diff != "" {
		t.Errorf("Register (-want +got):\n%s", diff)
	}
	if creds, _ := store.Credentials(ctx, "alice"); !strings.HasPrefix(creds.PasswordHash, "$argon2id$") {
		t.Errorf("stored hash %q is not an argon2id PHC string", creds.PasswordHash)
	}

	registerTests := []struct {
		name, username, password string
		wantErr                  error
	}{
		{name: "same name", username: "Alice", password: "password-2", wantErr: ErrUsernameTaken},
		{name: "other case", username: "aLICE", password: "password-2", wantErr: ErrUsernameTaken},
		{name: "bad username", username: "a", password: "password-2", wantErr: ErrInvalidUsername},
		{name: "short password", username: "bob", password: "short", wantErr: ErrInvalidPassword},
	}
	for _, tc := range registerTests {
		if _, err := svc.Register(ctx, tc.username, tc.password); !errors.Is(err, tc.wantErr) {
			t.Errorf("Register %s: error = %v, want %v", tc.name, err, tc.wantErr)
		}
	}

	loginTests := []struct {
		name, username, password string
		wantErr                  error
	}{
		{name: "exact", username: "Alice", password: "password-1"},
		{name: "other case", username: "alice", password: "password-1"},
		{name: "wrong password", username: "Alice", password: "password-2", wantErr: ErrBadCredentials},
		{name: "unknown user", username: "bob", password: "password-1", wantErr: ErrBadCredentials},
		{name: "invalid username", username: "b", password: "password-1", wantErr: ErrBadCredentials},
		{name: "empty password", username: "Alice", wantErr: ErrBadCredentials},
		{name: "oversized password", username: "Alice", password: strings.Repeat("p", 10000), wantErr: ErrBadCredentials},
	}
	for _, tc := range loginTests {
		sess, err := svc.Login(ctx, tc.username, tc.password)
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("Login %s: error = %v, want %v", tc.name, err, tc.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		want := Session{Token: sess.Token, User: alice, ExpiresAt: now.Add(time.Hour)}
		if diff := cmp.Diff(want, sess); diff != "" {
			t.Errorf("Login %s (-want +got):\n%s", tc.name, diff)
		}
		if !wellFormedToken(sess.Token) {
			t.Errorf("Login %s: token %q is not 32 base64url bytes", tc.name, sess.Token)
		}
	}
}

func TestSessions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	svc, store := newTestService(t, Config{SessionTTL: time.Hour})
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	svc.now = func() time.Time { return now }
	alice, err := svc.Register(ctx, "alice", "password-1")
	if err != nil {
		t.Fatal(err)
	}
	login := func() string {
		t.Helper()
		sess, err := svc.Login(ctx, "alice", "password-1")
		if err != nil {
			t.Fatal(err)
		}
		return sess.Token
	}

	token := login()
	sum := sha256.Sum256([]byte(token))
	if _, ok := store.sessions[string(sum[:])]; !ok || len(store.sessions) != 1 {
		t.Fatal("the store does not hold exactly the SHA-256 of the token")
	}
	got, err := svc.Session(ctx, token)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Session{User: alice, ExpiresAt: now.Add(time.Hour)}, got); diff != "" {
		t.Errorf("Session (-want +got):\n%s", diff)
	}

	for _, bad := range []string{"", "nope", token[:42], token + "A", strings.ToUpper(token), token[:42] + "!"} {
		if _, err := svc.Session(ctx, bad); !errors.Is(err, ErrSessionNotFound) {
			t.Errorf("Session(%q) error = %v, want %v", bad, err, ErrSessionNotFound)
		}
	}

	if err := svc.Logout(ctx, token); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Session(ctx, token); !errors.Is(err, ErrSessionNotFound) {
		t.Errorf("Session after logout: error = %v, want %v", err, ErrSessionNotFound)
	}
	if err := svc.Logout(ctx, token); !errors.Is(err, ErrSessionNotFound) {
		t.Errorf("second Logout: error = %v, want %v", err, ErrSessionNotFound)
	}

	expiring := login()
	now = now.Add(time.Hour)
	if _, err := svc.Session(ctx, expiring); !errors.Is(err, ErrSessionNotFound) {
		t.Errorf("Session at expiry: error = %v, want %v", err, ErrSessionNotFound)
	}
	if err := svc.Logout(ctx, expiring); !errors.Is(err, ErrSessionNotFound) {
		t.Errorf("Logout at expiry: error = %v, want %v", err, ErrSessionNotFound)
	}
	fresh := login()
	if n, err := svc.PruneSessions(ctx); err != nil || n != 2 {
		t.Errorf("PruneSessions = %d, %v; want 2, nil", n, err)
	}
	if _, err := svc.Session(ctx, fresh); err != nil {
		t.Errorf("Session of a fresh login after pruning: %v", err)
	}
}

// TestHashSlots checks that every password check, also for an unknown
// user, waits for a hashing slot and gives up with ErrOverloaded at the
// request's deadline.
func TestHashSlots(t *testing.T) {
	t.Parallel()
	svc, _ := newTestService(t, Config{MaxConcurrentHashes: 1})
	if _, err := svc.Register(context.Background(), "alice", "password-1"); err != nil {
		t.Fatal(err)
	}
	svc.hashes <- struct{}{} // take the only slot
	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{name: "register", call: func(ctx context.Context) error {
			_, err := svc.Register(ctx, "bob", "password-1")
			return err
		}},
		{name: "login", call: func(ctx context.Context) error {
			_, err := svc.Login(ctx, "alice", "password-1")
			return err
		}},
		{name: "login unknown user", call: func(ctx context.Context) error {
			_, err := svc.Login(ctx, "carol", "password-1")
			return err
		}},
	}
	for _, tc := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := tc.call(ctx)
		cancel()
		if !errors.Is(err, ErrOverloaded) {
			t.Errorf("%s with no free slot: error = %v, want %v", tc.name, err, ErrOverloaded)
		}
	}
	<-svc.hashes
	if _, err := svc.Login(context.Background(), "alice", "password-1"); err != nil {
		t.Errorf("login with a free slot: %v", err)
	}
}

package accounts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/communications/communications/libs/testenv"
)

// memStore is an in-memory Store.
type memStore struct {
	mu         sync.Mutex
	users      []Credentials
	sessions   map[string]*memSession // by token hash
	usersCalls int                    // calls of Users
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

func (m *memStore) Users(_ context.Context, usernames []string) ([]User, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.usersCalls++
	var users []User
	for _, c := range m.users {
		for _, name := range usernames {
			if strings.EqualFold(c.User.Username, name) {
				users = append(users, c.User)
				break
			}
		}
	}
	return users, nil
}

func (m *memStore) queries() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.usersCalls
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

func (m *memStore) RevokeSession(_ context.Context, tokenHash []byte, now time.Time) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.live(tokenHash, now)
	if !ok {
		return 0, ErrSessionNotFound
	}
	s.revoked = true
	return s.userID, nil
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

// revoked is one announcement of a revoked session.
type revoked struct {
	ID     string
	UserID int64
}

// memEvents records the events announced, or fails with err.
type memEvents struct {
	mu      sync.Mutex
	err     error
	revoked []revoked
}

func (e *memEvents) SessionRevoked(_ context.Context, id string, userID int64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	e.revoked = append(e.revoked, revoked{ID: id, UserID: userID})
	return nil
}

func (e *memEvents) take() []revoked {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.revoked
	e.revoked = nil
	return r
}

// testService is a Service on an in-memory store with its events and log.
type testService struct {
	*Service
	store  *memStore
	events *memEvents
	logs   *testenv.LogBuffer
}

func newTestService(t *testing.T, cfg Config) testService {
	t.Helper()
	ts := testService{store: newMemStore(), events: &memEvents{}, logs: &testenv.LogBuffer{}}
	log := slog.New(slog.NewTextHandler(ts.logs, nil))
	svc, err := NewService(ts.store, ts.events, log, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.Service = svc
	return ts
}

// hexSHA256 is the expected session id of token, computed independently.
func hexSHA256(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
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
	svc := newTestService(t, Config{SessionTTL: time.Hour})
	store := svc.store
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
		want := Session{ID: hexSHA256(sess.Token), Token: sess.Token, User: alice, ExpiresAt: now.Add(time.Hour)}
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
	svc := newTestService(t, Config{SessionTTL: time.Hour})
	store := svc.store
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
	if diff := cmp.Diff(Session{ID: hexSHA256(token), User: alice, ExpiresAt: now.Add(time.Hour)}, got); diff != "" {
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
	if diff := cmp.Diff([]revoked{{ID: hexSHA256(token), UserID: alice.ID}}, svc.events.take()); diff != "" {
		t.Errorf("events of logout (-want +got):\n%s", diff)
	}
	if _, err := svc.Session(ctx, token); !errors.Is(err, ErrSessionNotFound) {
		t.Errorf("Session after logout: error = %v, want %v", err, ErrSessionNotFound)
	}
	if err := svc.Logout(ctx, token); !errors.Is(err, ErrSessionNotFound) {
		t.Errorf("second Logout: error = %v, want %v", err, ErrSessionNotFound)
	}
	if got := svc.events.take(); len(got) != 0 {
		t.Errorf("a refused logout announced %v", got)
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
	svc := newTestService(t, Config{MaxConcurrentHashes: 1})
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

// TestLogoutAnnounceFails checks that a logout whose announcement fails is
// still a logout: the session is revoked, the caller gets nil, and the
// failure is logged without the token.
func TestLogoutAnnounceFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	svc := newTestService(t, Config{})
	svc.events.err = errors.New("nats: connection closed")
	if _, err := svc.Register(ctx, "alice", "password-1"); err != nil {
		t.Fatal(err)
	}
	sess, err := svc.Login(ctx, "alice", "password-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Logout(ctx, sess.Token); err != nil {
		t.Fatalf("Logout with failing events: %v, want nil", err)
	}
	if _, err := svc.Session(ctx, sess.Token); !errors.Is(err, ErrSessionNotFound) {
		t.Errorf("Session after logout: error = %v, want %v", err, ErrSessionNotFound)
	}
	logs := svc.logs.String()
	if !strings.Contains(logs, "connection closed") || !strings.Contains(logs, sess.ID) {
		t.Errorf("log %q does not report the failure with the session id", logs)
	}
	if strings.Contains(logs, sess.Token) {
		t.Errorf("log %q holds the token", logs)
	}
}

func TestLookupUsers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	svc := newTestService(t, Config{})
	var users []User
	for _, name := range []string{"Alice", "bob", "Carol.C"} {
		u, err := svc.Register(ctx, name, "password-1")
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	alice, bob, carol := users[0], users[1], users[2]

	tests := []struct {
		name      string
		names     []string
		want      []User
		wantErr   error
		wantText  string
		wantQuery bool // the store is asked, once
	}{
		{name: "one", names: []string{"bob"}, want: []User{bob}, wantQuery: true},
		{name: "request order", names: []string{"Carol.C", "bob", "Alice"}, want: []User{carol, bob, alice}, wantQuery: true},
		{name: "any letter case", names: []string{"aLiCe", "BOB", "carol.c"}, want: []User{alice, bob, carol}, wantQuery: true},
		{name: "repeated", names: []string{"bob", "Bob"}, want: []User{bob, bob}, wantQuery: true},
		{name: "the most", names: slices.Repeat([]string{"bob"}, MaxLookupUsernames), want: slices.Repeat([]User{bob}, MaxLookupUsernames), wantQuery: true},
		{name: "unknown", names: []string{"alice", "Dave", "eve"}, wantErr: ErrUnknownUser,
			wantText: `unknown user "Dave"`, wantQuery: true},
		{name: "invalid name", names: []string{"alice", "a b", "Dave"}, wantErr: ErrUnknownUser,
			wantText: `unknown user "a b"`, wantQuery: true},
		{name: "empty name", names: []string{""}, wantErr: ErrUnknownUser, wantText: `unknown user ""`},
		// Go lowercases U+0130 to 'i', so this would be "alice".
		{name: "non-ASCII folding to a user", names: []string{"AL\u0130CE"}, wantErr: ErrUnknownUser,
			wantText: fmt.Sprintf("unknown user %q", "AL\u0130CE")},
		{name: "like pattern", names: []string{"b_b"}, wantErr: ErrUnknownUser, wantText: `unknown user "b_b"`, wantQuery: true},
		{name: "none", names: nil, wantErr: ErrInvalidLookup},
		{name: "empty", names: []string{}, wantErr: ErrInvalidLookup},
		{name: "too many", names: slices.Repeat([]string{"bob"}, MaxLookupUsernames+1), wantErr: ErrInvalidLookup},
	}
	// The cases share the store and run one at a time, so that each can
	// count its queries.
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := svc.store.queries()
			got, err := svc.LookupUsers(ctx, tc.names)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("LookupUsers error = %v, want %v", err, tc.wantErr)
			}
			if tc.wantText != "" && err.Error() != tc.wantText {
				t.Errorf("error text %q, want %q", err.Error(), tc.wantText)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("LookupUsers (-want +got):\n%s", diff)
			}
			want := 0
			if tc.wantQuery {
				want = 1
			}
			if asked := svc.store.queries() - before; asked != want {
				t.Errorf("the store was asked %d times, want %d", asked, want)
			}
		})
	}
}

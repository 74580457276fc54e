package authstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/auth/internal/accounts"
	"github.com/communications/communications/services/auth/internal/authstore"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// newStore returns a Store on a fresh, migrated database.
func newStore(t *testing.T) *authstore.Store {
	t.Helper()
	ctx := context.Background()
	pool, err := pgdb.Open(ctx, testenv.Postgres(t), 4, noop.NewTracerProvider())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	// A second run finds nothing to apply.
	for range 2 {
		if err := pgdb.Migrate(ctx, pool, authstore.Migrations(), authstore.MigrationTable, log); err != nil {
			t.Fatal(err)
		}
	}
	return authstore.New(pool)
}

func hashOf(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func TestUsers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)

	alice, err := s.CreateUser(ctx, "Alice.B", "hash-a")
	if err != nil {
		t.Fatal(err)
	}
	bob, err := s.CreateUser(ctx, "bob", "hash-b")
	if err != nil {
		t.Fatal(err)
	}
	if alice.ID <= 0 || bob.ID == alice.ID {
		t.Fatalf("ids %d and %d: want distinct positive ids", alice.ID, bob.ID)
	}
	for _, name := range []string{"Alice.B", "alice.b", "ALICE.B"} {
		if _, err := s.CreateUser(ctx, name, "hash-c"); !errors.Is(err, accounts.ErrUsernameTaken) {
			t.Errorf("CreateUser(%q) error = %v, want %v", name, err, accounts.ErrUsernameTaken)
		}
	}

	tests := []struct {
		name     string
		username string
		want     accounts.Credentials
		wantErr  error
	}{
		{name: "as typed", username: "Alice.B", want: accounts.Credentials{User: alice, PasswordHash: "hash-a"}},
		{name: "other case", username: "aLiCe.b", want: accounts.Credentials{User: alice, PasswordHash: "hash-a"}},
		{name: "second user", username: "BOB", want: accounts.Credentials{User: bob, PasswordHash: "hash-b"}},
		{name: "unknown", username: "carol", wantErr: accounts.ErrUserNotFound},
		{name: "like pattern", username: "b_b", wantErr: accounts.ErrUserNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := s.Credentials(ctx, tc.username)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Credentials(%q) error = %v, want %v", tc.username, err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Credentials(%q) (-want +got):\n%s", tc.username, diff)
			}
		})
	}
}

func TestLookupUsers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	var users []accounts.User
	for _, name := range []string{"Alice.B", "bob", "Carol"} {
		u, err := s.CreateUser(ctx, name, "hash")
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	alice, bob, carol := users[0], users[1], users[2]

	tests := []struct {
		name      string
		usernames []string
		want      []accounts.User
	}{
		{name: "as typed", usernames: []string{"Alice.B", "bob"}, want: []accounts.User{alice, bob}},
		{name: "any letter case", usernames: []string{"ALICE.B", "cArOl"}, want: []accounts.User{alice, carol}},
		{name: "repeated", usernames: []string{"bob", "BOB"}, want: []accounts.User{bob}},
		{name: "unknown left out", usernames: []string{"dave", "carol"}, want: []accounts.User{carol}},
		{name: "none known", usernames: []string{"dave"}},
		{name: "like pattern", usernames: []string{"b_b", "%"}},
		{name: "no names", usernames: []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := s.Users(ctx, tc.usernames)
			if err != nil {
				t.Fatal(err)
			}
			byID := func(a, b accounts.User) bool { return a.ID < b.ID }
			if diff := cmp.Diff(tc.want, got, cmpopts.SortSlices(byID), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Users(%q) (-want +got):\n%s", tc.usernames, diff)
			}
		})
	}
}

// TestConcurrentRegistration checks that of many registrations of one name
// in different letter cases, exactly one wins.
func TestConcurrentRegistration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	names := []string{"dave", "Dave", "DAVE", "dAVE", "daVe", "DaVe"}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			_, errs[i] = s.CreateUser(ctx, name, "hash")
		})
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, accounts.ErrUsernameTaken):
			t.Errorf("CreateUser(%q): %v", names[i], err)
		}
	}
	if won != 1 {
		t.Errorf("%d registrations succeeded, want 1", won)
	}
}

func TestSessions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	alice, err := s.CreateUser(ctx, "alice", "hash")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	live, revoked, expired := hashOf("live"), hashOf("revoked"), hashOf("expired")
	for _, h := range [][]byte{live, revoked} {
		if err := s.CreateSession(ctx, h, alice.ID, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateSession(ctx, expired, alice.ID, now); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(ctx, live, alice.ID, now.Add(time.Hour)); err == nil {
		t.Error("CreateSession with a duplicate token hash succeeded")
	}
	if userID, err := s.RevokeSession(ctx, revoked, now); err != nil || userID != alice.ID {
		t.Fatalf("RevokeSession = %d, %v; want %d, nil", userID, err, alice.ID)
	}

	tests := []struct {
		name    string
		hash    []byte
		want    accounts.Session
		wantErr error
	}{
		{name: "live", hash: live, want: accounts.Session{User: alice, ExpiresAt: now.Add(time.Hour)}},
		{name: "revoked", hash: revoked, wantErr: accounts.ErrSessionNotFound},
		{name: "expired", hash: expired, wantErr: accounts.ErrSessionNotFound},
		{name: "unknown", hash: hashOf("unknown"), wantErr: accounts.ErrSessionNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := s.Session(ctx, tc.hash, now)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Session error = %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Session (-want +got):\n%s", diff)
			}
			if tc.wantErr != nil {
				if _, err := s.RevokeSession(ctx, tc.hash, now); !errors.Is(err, accounts.ErrSessionNotFound) {
					t.Errorf("RevokeSession error = %v, want %v", err, accounts.ErrSessionNotFound)
				}
			}
		})
	}
}

func TestDeleteExpiredSessions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	alice, err := s.CreateUser(ctx, "alice", "hash")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for i, exp := range []time.Duration{-time.Hour, 0, time.Second} {
		if err := s.CreateSession(ctx, hashOf(string(rune('a'+i))), alice.ID, now.Add(exp)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.DeleteExpiredSessions(ctx, now)
	if err != nil || n != 2 {
		t.Fatalf("DeleteExpiredSessions = %d, %v; want 2, nil", n, err)
	}
	if _, err := s.Session(ctx, hashOf("c"), now); err != nil {
		t.Errorf("the unexpired session is gone: %v", err)
	}
	if err := s.CreateSession(ctx, bytes.Repeat([]byte{1}, 16), alice.ID, now); err == nil {
		t.Error("CreateSession accepted a 16-byte token hash")
	}
}

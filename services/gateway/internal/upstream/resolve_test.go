package upstream

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
)

// authStub answers session lookups on a real NATS server as the auth
// service would: "good" is a live session, "expired" one that has just
// expired, anything else is refused. It counts the lookups.
func authStub(t *testing.T) (*Client, *atomic.Int64) {
	t.Helper()
	return authStubDuring(t, nil)
}

// authStubDuring is authStub that calls during (if not nil) while it
// answers each lookup, before the answer leaves.
func authStubDuring(t *testing.T, during func()) (*Client, *atomic.Int64) {
	t.Helper()
	_, srv, subj, client := natsStub(t)
	var lookups atomic.Int64
	_, err := natsbus.Handle(context.Background(), srv, subj.AuthSession(), "auth",
		func(_ context.Context, req busapi.SessionRequest) (busapi.Session, error) {
			lookups.Add(1)
			if during != nil {
				during()
			}
			s := busapi.Session{ID: "s1", User: busapi.User{ID: 7, Username: "alice"}, ExpiresAt: time.Now().Add(time.Hour)}
			switch req.Token {
			case "good":
				return s, nil
			case "expired":
				s.ExpiresAt = time.Now().Add(-time.Millisecond)
				return s, nil
			}
			return busapi.Session{}, busapi.Errorf(protocol.CodeUnauthorized, "no such session")
		})
	if err != nil {
		t.Fatal(err)
	}
	return client, &lookups
}

// TestResolveSessionCurrent: a new websocket's lookup may stand for its own
// session check only when the auth service itself answered it and nothing
// was revoked on the replica since the lookup began.
func TestResolveSessionCurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name string
		ttl  time.Duration
		// before runs before the lookup, between it and current
		before, between func(c *CachedSessions)
		want            bool
	}{
		{name: "answered by auth", ttl: time.Minute, want: true},
		{name: "answered by auth, no cache", want: true},
		{name: "served from the cache", ttl: time.Minute, before: func(c *CachedSessions) {
			if _, err := c.Session(ctx, "good"); err != nil {
				t.Error(err)
			}
		}, want: false},
		{name: "a revocation event after the lookup", ttl: time.Minute,
			between: func(c *CachedSessions) { c.RevokeSession("other", nil) }, want: false},
		{name: "a revocation event after the lookup, no cache",
			between: func(c *CachedSessions) { c.RevokeSession("other", nil) }, want: false},
		{name: "a logout through this replica after the lookup", ttl: time.Minute,
			between: func(c *CachedSessions) { _ = c.Logout(ctx, "elsewhere") }, want: false},
		{name: "a revocation before the lookup", ttl: time.Minute,
			before: func(c *CachedSessions) { c.RevokeSession("other", nil) }, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			client, _ := authStub(t)
			c := CacheSessions(client, 10, tc.ttl)
			if tc.before != nil {
				tc.before(c)
			}
			s, current, err := c.ResolveSession(ctx, "good")
			if err != nil || s.User.ID != 7 {
				t.Fatalf("resolve = %+v, %v; want alice's session", s, err)
			}
			if tc.between != nil {
				tc.between(c)
			}
			if got := current(); got != tc.want {
				t.Errorf("current() = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestResolveSessionRefused: a refused session is an error with the
// auth service's code, and is never cached.
func TestResolveSessionRefused(t *testing.T) {
	t.Parallel()
	client, lookups := authStub(t)
	c := CacheSessions(client, 10, time.Minute)
	for range 2 {
		if _, current, err := c.ResolveSession(context.Background(), "bad"); busapi.CodeOf(err) != protocol.CodeUnauthorized || current != nil {
			t.Fatalf("resolve = %v (current %v), want unauthorized", err, current != nil)
		}
	}
	if n := lookups.Load(); n != 2 {
		t.Errorf("auth asked %d times, want 2 (a refusal is not cached)", n)
	}
}

// TestResolveSessionExpired: a session that has expired by the time the
// connection is registered is not current, whoever answered its lookup.
func TestResolveSessionExpired(t *testing.T) {
	t.Parallel()
	for _, ttl := range []time.Duration{0, time.Minute} {
		client, _ := authStub(t)
		c := CacheSessions(client, 10, ttl)
		s, current, err := c.ResolveSession(context.Background(), "expired")
		if err != nil || s.ID != "s1" {
			t.Fatalf("cache ttl %v: resolve = %+v, %v; want the session", ttl, s, err)
		}
		if current() {
			t.Errorf("cache ttl %v: current() = true for a session expired at %v", ttl, s.ExpiresAt)
		}
	}
}

// TestResolveSessionRevokedDuringLookup: a revocation on the replica while
// the auth service answers the lookup (after the lookup began, before its
// answer arrived) makes the answer not current: ResolveSession counts
// revocations from before it asks.
func TestResolveSessionRevokedDuringLookup(t *testing.T) {
	t.Parallel()
	for _, ttl := range []time.Duration{0, time.Minute} {
		var c atomic.Pointer[CachedSessions]
		client, lookups := authStubDuring(t, func() { c.Load().RevokeSession("other", nil) })
		c.Store(CacheSessions(client, 10, ttl))
		_, current, err := c.Load().ResolveSession(context.Background(), "good")
		if err != nil || lookups.Load() != 1 {
			t.Fatalf("cache ttl %v: resolve: %v (%d lookups), want one lookup answered", ttl, err, lookups.Load())
		}
		if current() {
			t.Errorf("cache ttl %v: current() = true after a revocation during the lookup", ttl)
		}
	}
}

// TestRevokeSessionOrder: RevokeSession counts the revocation and drops the
// session from the cache before it closes the session's connections, so
// that no connection registered after their search began stands on a
// lookup the revocation overtook, and no request resolves the session from
// this replica's cache once they are closed.
func TestRevokeSessionOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	client, lookups := authStub(t)
	c := CacheSessions(client, 10, time.Minute)
	_, current, err := c.ResolveSession(ctx, "good")
	if err != nil || !current() {
		t.Fatalf("resolve: %v (current %v), want a current answer", err, err == nil && current())
	}
	closed := false
	c.RevokeSession("s1", func() {
		closed = true
		if current() {
			t.Error("connections closed while a lookup before the revocation is still current")
		}
		if l := c.cache.get("good", time.Now()); l.ok {
			t.Error("connections closed while the revoked session is still cached")
		}
	})
	if !closed {
		t.Fatal("RevokeSession did not close the connections")
	}
	// After it, the token asks the auth service again.
	before := lookups.Load()
	if _, err := c.Session(ctx, "good"); err != nil {
		t.Fatal(err)
	}
	if n := lookups.Load() - before; n != 1 {
		t.Errorf("auth asked %d times after the revocation, want 1", n)
	}
}

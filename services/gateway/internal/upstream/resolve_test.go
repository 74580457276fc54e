package upstream

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
)

// authStub answers session lookups on a real NATS server as the auth
// service would: "good" is a live session, anything else is refused. It
// counts the lookups.
func authStub(t *testing.T) (*Client, *atomic.Int64) {
	t.Helper()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var lookups atomic.Int64
	srv := natsbus.NewServer(nc, noop.NewTracerProvider(), telemetry.NewLogger(io.Discard, 0), 5*time.Second)
	_, err = natsbus.Handle(context.Background(), srv, subj.AuthSession(), "auth",
		func(_ context.Context, req busapi.SessionRequest) (busapi.Session, error) {
			lookups.Add(1)
			if req.Token != "good" {
				return busapi.Session{}, busapi.Errorf(protocol.CodeUnauthorized, "no such session")
			}
			return busapi.Session{ID: "s1", User: busapi.User{ID: 7, Username: "alice"}, ExpiresAt: time.Now().Add(time.Hour)}, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	return New(natsbus.NewClient(nc, noop.NewTracerProvider()), subj, 5*time.Second), &lookups
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
			between: func(c *CachedSessions) { c.RevokeSession("other") }, want: false},
		{name: "a revocation event after the lookup, no cache",
			between: func(c *CachedSessions) { c.RevokeSession("other") }, want: false},
		{name: "a logout through this replica after the lookup", ttl: time.Minute,
			between: func(c *CachedSessions) { _ = c.Logout(ctx, "elsewhere") }, want: false},
		{name: "a revocation before the lookup", ttl: time.Minute,
			before: func(c *CachedSessions) { c.RevokeSession("other") }, want: true},
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

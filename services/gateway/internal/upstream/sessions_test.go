package upstream

import (
	"testing"
	"time"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

func TestSessionCache(t *testing.T) {
	t.Parallel()
	now := time.Now()
	session := func(id string) busapi.Session {
		return busapi.Session{ID: id, User: busapi.User{ID: 7, Username: "alice"}, ExpiresAt: now.Add(time.Hour)}
	}
	tests := []struct {
		name string
		run  func(c *sessionCache)
		// token looked up at now, and whether the cache must hold it
		token string
		want  bool
	}{
		{"resolved session is kept", func(c *sessionCache) {
			l := c.get("tok", now)
			c.put("tok", session("s1"), l.epoch, now)
		}, "tok", true},
		{"revoked session is dropped", func(c *sessionCache) {
			l := c.get("tok", now)
			c.put("tok", session("s1"), l.epoch, now)
			c.revoke("s1")
		}, "tok", false},
		{"other session stays", func(c *sessionCache) {
			l := c.get("tok", now)
			c.put("tok", session("s1"), l.epoch, now)
			l = c.get("tok2", now)
			c.put("tok2", session("s2"), l.epoch, now)
			c.revoke("s2")
		}, "tok", true},
		{"lookup overtaken by a revocation is not kept", func(c *sessionCache) {
			l := c.get("tok", now)
			c.revoke("s1") // arrives while the auth service answers
			c.put("tok", session("s1"), l.epoch, now)
		}, "tok", false},
		{"logout through this gateway forgets", func(c *sessionCache) {
			l := c.get("tok", now)
			c.put("tok", session("s1"), l.epoch, now)
			c.forget("tok")
		}, "tok", false},
		{"expired session is not served", func(c *sessionCache) {
			l := c.get("tok", now)
			s := session("s1")
			s.ExpiresAt = now.Add(-time.Second)
			c.put("tok", s, l.epoch, now)
		}, "tok", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newSessionCache(10, time.Minute)
			tc.run(c)
			if got := c.get(tc.token, now).ok; got != tc.want {
				t.Errorf("cached = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSessionCacheTTL(t *testing.T) {
	t.Parallel()
	c := newSessionCache(10, 20*time.Millisecond)
	l := c.get("tok", time.Now())
	c.put("tok", busapi.Session{ID: "s1", ExpiresAt: time.Now().Add(time.Hour)}, l.epoch, time.Now())
	testenv.Eventually(t, 5*time.Second, func() bool {
		return !c.get("tok", time.Now()).ok
	}, "session dropped after its ttl")
}

// TestSessionCacheRevokesAfterEviction: when the cache is full, the
// session evicted is the same in both of its indexes, so a revocation still
// finds every session the cache serves (a token used recently must not
// outlive the eviction of its session id).
func TestSessionCacheRevokesAfterEviction(t *testing.T) {
	t.Parallel()
	now := time.Now()
	c := newSessionCache(2, time.Minute)
	add := func(token, id string) {
		l := c.get(token, now)
		c.put(token, busapi.Session{ID: id, ExpiresAt: now.Add(time.Hour)}, l.epoch, now)
	}
	add("A", "sA")
	add("B", "sB")
	if !c.get("A", now).ok { // A used: B is the oldest now
		t.Fatal("A not cached")
	}
	add("C", "sC") // evicts B
	c.revoke("sA")
	if c.get("A", now).ok {
		t.Error("token A still served after its session was revoked")
	}
	c.revoke("sC")
	if c.get("C", now).ok {
		t.Error("token C still served after its session was revoked")
	}
}

// TestSessionCacheRefreshesAhead: an entry used late in its ttl is due to be resolved again in the background, once; what that
// lookup answers replaces it, drops it, or (a failure) leaves it to its
// ttl. Times are given, not waited for.
func TestSessionCacheRefreshesAhead(t *testing.T) {
	t.Parallel()
	const ttl = time.Minute
	t0 := time.Now()
	s1 := busapi.Session{ID: "s1", User: busapi.User{ID: 7}, ExpiresAt: t0.Add(time.Hour)}
	fill := func(t *testing.T) *sessionCache {
		t.Helper()
		c := newSessionCache(10, ttl)
		l := c.get("tok", t0)
		c.put("tok", s1, l.epoch, t0)
		if l := c.get("tok", t0.Add(ttl/2-time.Second)); !l.ok || l.refresh {
			t.Fatalf("first half of the ttl: %+v, want served, no refresh", l)
		}
		return c
	}
	late := t0.Add(ttl * 9 / 10)
	tests := []struct {
		name string
		// answer is the background lookup's; revoke revokes s1 while
		// it runs
		answer error
		revoke bool
		// whether the token is served just past the first lookup's ttl
		want bool
	}{
		{"resolved again: served for another ttl", nil, false, true},
		{"refused: dropped", busapi.Errorf(protocol.CodeUnauthorized, "revoked"), false, false},
		{"auth service away: kept to its ttl only", busapi.Errorf(protocol.CodeUnavailable, "away"), false, false},
		{"overtaken by a revocation: not kept", nil, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := fill(t)
			l := c.get("tok", late)
			if !l.ok || !l.refresh {
				t.Fatalf("nine tenths into the ttl: %+v, want served and a refresh", l)
			}
			if again := c.get("tok", late); !again.ok || again.refresh {
				t.Fatalf("while a refresh runs: %+v, want served, no second refresh", again)
			}
			if tc.revoke {
				c.revoke("s1")
			}
			c.refreshed("tok", s1, tc.answer, l.epoch, late)
			if tc.answer != nil && busapi.CodeOf(tc.answer) == protocol.CodeUnauthorized {
				if c.get("tok", late).ok {
					t.Fatal("served after the auth service refused it")
				}
			}
			if got := c.get("tok", t0.Add(ttl+time.Second)).ok; got != tc.want {
				t.Errorf("served past the first lookup's ttl = %v, want %v", got, tc.want)
			}
		})
	}
}

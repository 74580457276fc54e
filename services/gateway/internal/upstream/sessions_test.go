package upstream

import (
	"testing"
	"time"

	"github.com/communications/communications/libs/busapi"
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
			_, epoch, _ := c.get("tok", now)
			c.put("tok", session("s1"), epoch)
		}, "tok", true},
		{"revoked session is dropped", func(c *sessionCache) {
			_, epoch, _ := c.get("tok", now)
			c.put("tok", session("s1"), epoch)
			c.revoke("s1")
		}, "tok", false},
		{"other session stays", func(c *sessionCache) {
			_, epoch, _ := c.get("tok", now)
			c.put("tok", session("s1"), epoch)
			_, epoch, _ = c.get("tok2", now)
			c.put("tok2", session("s2"), epoch)
			c.revoke("s2")
		}, "tok", true},
		{"lookup overtaken by a revocation is not kept", func(c *sessionCache) {
			_, epoch, _ := c.get("tok", now)
			c.revoke("s1") // arrives while the auth service answers
			c.put("tok", session("s1"), epoch)
		}, "tok", false},
		{"logout through this gateway forgets", func(c *sessionCache) {
			_, epoch, _ := c.get("tok", now)
			c.put("tok", session("s1"), epoch)
			c.forget("tok")
		}, "tok", false},
		{"expired session is not served", func(c *sessionCache) {
			_, epoch, _ := c.get("tok", now)
			s := session("s1")
			s.ExpiresAt = now.Add(-time.Second)
			c.put("tok", s, epoch)
		}, "tok", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newSessionCache(10, time.Minute)
			tc.run(c)
			if _, _, got := c.get(tc.token, now); got != tc.want {
				t.Errorf("cached = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSessionCacheTTL(t *testing.T) {
	t.Parallel()
	c := newSessionCache(10, 20*time.Millisecond)
	_, epoch, _ := c.get("tok", time.Now())
	c.put("tok", busapi.Session{ID: "s1", ExpiresAt: time.Now().Add(time.Hour)}, epoch)
	testenv.Eventually(t, 5*time.Second, func() bool {
		_, _, ok := c.get("tok", time.Now())
		return !ok
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
		_, epoch, _ := c.get(token, now)
		c.put(token, busapi.Session{ID: id, ExpiresAt: now.Add(time.Hour)}, epoch)
	}
	add("A", "sA")
	add("B", "sB")
	if _, _, ok := c.get("A", now); !ok { // A used: B is the oldest now
		t.Fatal("A not cached")
	}
	add("C", "sC") // evicts B
	c.revoke("sA")
	if _, _, ok := c.get("A", now); ok {
		t.Error("token A still served after its session was revoked")
	}
	c.revoke("sC")
	if _, _, ok := c.get("C", now); ok {
		t.Error("token C still served after its session was revoked")
	}
}

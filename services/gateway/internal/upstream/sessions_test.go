package upstream

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
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

// TestSessionCacheRefreshesAhead: an entry used late in its ttl is due to
// be resolved again in the background, once; what that lookup answers
// replaces it, drops it, or (a failure) leaves it to its ttl, never to be
// resolved in the background again. Times are given, not waited for.
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
		// answer is the background lookup's; during runs while it
		// runs
		answer error
		during func(c *sessionCache)
		// whether the token is served just before the first lookup's
		// ttl, and just past it
		wantBefore, wantPast bool
	}{
		{"resolved again: served for another ttl", nil, nil, true, true},
		{"refused: dropped", busapi.Errorf(protocol.CodeUnauthorized, "revoked"), nil, false, false},
		{"auth service away: kept to its ttl only", busapi.Errorf(protocol.CodeUnavailable, "away"), nil, true, false},
		{"overtaken by a revocation: kept to its ttl only", nil, func(c *sessionCache) { c.revoke("other") }, true, false},
		{"overtaken by its revocation: dropped", nil, func(c *sessionCache) { c.revoke("s1") }, false, false},
		{"overtaken by a logout: dropped", nil, func(c *sessionCache) { c.forget("tok") }, false, false},
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
			if tc.during != nil {
				tc.during(c)
			}
			c.refreshed("tok", l, s1, tc.answer, late)
			if tc.answer != nil && busapi.CodeOf(tc.answer) == protocol.CodeUnauthorized {
				if c.get("tok", late).ok {
					t.Fatal("served after the auth service refused it")
				}
			}
			if tc.answer != nil {
				// No second background lookup, however often used.
				for range 100 {
					if l := c.get("tok", late); l.refresh {
						t.Fatalf("after a failed background lookup: %+v, want no refresh", l)
					}
				}
			}
			before := c.get("tok", t0.Add(ttl-time.Second))
			if before.ok != tc.wantBefore || (tc.answer != nil && before.refresh) {
				t.Errorf("just before the first lookup's ttl: %+v, want served %v (no refresh after a failure)", before, tc.wantBefore)
			}
			if before.refresh {
				c.refreshed("tok", before, s1, busapi.Errorf(protocol.CodeUnavailable, "away"), t0.Add(ttl-time.Second))
			}
			if got := c.get("tok", t0.Add(ttl+time.Second)).ok; got != tc.wantPast {
				t.Errorf("served past the first lookup's ttl = %v, want %v", got, tc.wantPast)
			}
		})
	}
}

// TestSessionCacheBoundsBackgroundLookups: when every background lookup is
// under way, an entry due for one serves on without, and is resolved at a
// later use.
func TestSessionCacheBoundsBackgroundLookups(t *testing.T) {
	t.Parallel()
	const ttl = time.Minute
	t0 := time.Now()
	c := newSessionCache(10, ttl)
	if cap(c.background) != maxBackgroundLookups {
		t.Fatalf("room for %d background lookups, want %d", cap(c.background), maxBackgroundLookups)
	}
	c.background = make(chan struct{}, 1) // one at a time
	for _, tok := range []string{"A", "B"} {
		l := c.get(tok, t0)
		c.put(tok, busapi.Session{ID: "s" + tok, ExpiresAt: t0.Add(time.Hour)}, l.epoch, t0)
	}
	late := t0.Add(ttl * 9 / 10)
	a := c.get("A", late)
	if !a.ok || !a.refresh {
		t.Fatalf("A late in its ttl: %+v, want served and a refresh", a)
	}
	if b := c.get("B", late); !b.ok || b.refresh {
		t.Fatalf("B while A's lookup runs: %+v, want served, no refresh (no room)", b)
	}
	c.refreshed("A", a, a.s, nil, late)
	b := c.get("B", late)
	if !b.ok || !b.refresh {
		t.Fatalf("B once A's lookup is done: %+v, want served and a refresh", b)
	}
	c.refreshed("B", b, b.s, nil, late)
}

// fakeAuth answers session lookups and logouts on a real NATS server as
// the auth service would: "good" is a live session, anything else is
// refused. While gate is set, a lookup waits for it to close; while away
// is set, lookups answer unavailable. It counts the lookups.
type fakeAuth struct {
	mu      sync.Mutex
	gate    chan struct{}
	away    bool
	lookups int
}

func (a *fakeAuth) set(f func(a *fakeAuth)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(a)
}

func (a *fakeAuth) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lookups
}

func startFakeAuth(t *testing.T) (*Client, *fakeAuth) {
	t.Helper()
	nc, srv, subj, client := natsStub(t)
	fa := &fakeAuth{}
	if _, err := natsbus.Handle(context.Background(), srv, subj.AuthSession(), "auth",
		func(_ context.Context, req busapi.SessionRequest) (busapi.Session, error) {
			fa.mu.Lock()
			gate := fa.gate
			fa.mu.Unlock()
			if gate != nil {
				<-gate
			}
			fa.mu.Lock()
			defer fa.mu.Unlock()
			fa.lookups++
			switch {
			case fa.away:
				return busapi.Session{}, busapi.Errorf(protocol.CodeUnavailable, "auth away")
			case req.Token != "good":
				return busapi.Session{}, busapi.Errorf(protocol.CodeUnauthorized, "no such session")
			}
			return busapi.Session{ID: "s1", User: busapi.User{ID: 7, Username: "alice"}, ExpiresAt: time.Now().Add(24 * time.Hour)}, nil
		}); err != nil {
		t.Fatal(err)
	}
	if _, err := natsbus.Handle(context.Background(), srv, subj.AuthLogout(), "auth",
		func(context.Context, busapi.SessionRequest) (struct{}, error) { return struct{}{}, nil }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return client, fa
}

// TestCachedSessionsRefresh: CachedSessions resolves a session once, serves
// it from the cache, and resolves it again in the background when used late
// in its ttl (fromCache, at the time it is given): the new entry counts
// from that time; a lookup overtaken by a logout is not kept; a failed
// one leaves the entry to its ttl without another.
func TestCachedSessionsRefresh(t *testing.T) {
	t.Parallel()
	const ttl = time.Minute
	ctx := context.Background()
	client, auth := startFakeAuth(t)
	c := CacheSessions(client, 10, ttl)
	t0 := time.Now()
	for range 3 {
		if s, err := c.Session(ctx, "good"); err != nil || s.User.ID != 7 {
			t.Fatalf("session = %+v, %v; want alice's", s, err)
		}
	}
	if n := auth.count(); n != 1 {
		t.Fatalf("auth asked %d times, want 1 (then the cache)", n)
	}
	// fromCache waits for nothing: the lookup it starts runs on.
	fromCache := func(at time.Time) lookup {
		t.Helper()
		l := c.fromCache(ctx, "good", at)
		c.cache.refreshes.Wait()
		return l
	}

	late := t0.Add(ttl * 95 / 100)
	if l := fromCache(late); !l.ok || !l.refresh {
		t.Fatalf("late in the ttl: %+v, want served and a refresh", l)
	}
	if n := auth.count(); n != 2 {
		t.Fatalf("auth asked %d times, want 2 (one background lookup)", n)
	}
	// The new entry counts from late, the time fromCache was given (the
	// auth service away: its own background lookup fails).
	auth.set(func(a *fakeAuth) { a.away = true })
	if l := fromCache(late.Add(ttl - time.Second)); !l.ok || !l.checked.Equal(late) {
		t.Fatalf("refreshed entry a ttl after the first lookup: %+v, want served, resolved at %v", l, late)
	}
	if l := fromCache(late.Add(ttl)); l.ok {
		t.Fatalf("refreshed entry a ttl after its lookup began: %+v, want not served", l)
	}
	auth.set(func(a *fakeAuth) { a.away = false })

	t.Run("a background lookup overtaken by a logout is not kept", func(t *testing.T) {
		t1 := time.Now()
		if _, err := c.Session(ctx, "good"); err != nil {
			t.Fatal(err)
		}
		gate := make(chan struct{})
		auth.set(func(a *fakeAuth) { a.gate = gate })
		late := t1.Add(ttl * 95 / 100)
		if l := c.fromCache(ctx, "good", late); !l.ok || !l.refresh {
			t.Fatalf("late in the ttl: %+v, want served and a refresh", l)
		}
		// The logout is answered while the lookup waits.
		if err := c.Logout(ctx, "good"); err != nil {
			t.Fatal(err)
		}
		auth.set(func(a *fakeAuth) { a.gate = nil })
		close(gate)
		c.cache.refreshes.Wait()
		if l := fromCache(late); l.ok {
			t.Errorf("after the logout: %+v, want not served", l)
		}
	})

	t.Run("a failed background lookup is not tried again", func(t *testing.T) {
		t2 := time.Now()
		if _, err := c.Session(ctx, "good"); err != nil {
			t.Fatal(err)
		}
		auth.set(func(a *fakeAuth) { a.away = true })
		defer auth.set(func(a *fakeAuth) { a.away = false })
		before := auth.count()
		late := t2.Add(ttl * 95 / 100)
		for range 100 {
			if l := fromCache(late); !l.ok {
				t.Fatalf("late in the ttl, auth away: %+v, want served", l)
			}
		}
		if l := fromCache(t2.Add(ttl - time.Second)); !l.ok {
			t.Fatalf("just within the ttl, auth away: %+v, want served", l)
		}
		if n := auth.count() - before; n != 1 {
			t.Errorf("auth asked %d times for 101 requests late in the ttl, want 1", n)
		}
	})
}

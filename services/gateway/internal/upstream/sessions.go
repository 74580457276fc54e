package upstream

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"

	"github.com/communications/communications/libs/busapi"
)

// sessionCache keeps the sessions this gateway resolved for a short time,
// so that a request does not ask the auth service again. A session the
// auth service revokes (subjects.AuthSessionRevoked, published at logout)
// is dropped at once; should that event be missed (NATS away), an entry
// lives at most ttl, and never beyond its session's expiry.
type sessionCache struct {
	mu sync.Mutex
	// epoch counts revocations: a lookup that started before one may
	// have resolved the revoked session, so it is not stored.
	epoch uint64
	// byToken and tokenOf see the same operations in the same order (an
	// add, a use or a removal of one entry is made in both), so their LRU
	// orders agree and both evict the same session when full: a revocation
	// always finds the token of a session still cached.
	byToken *expirable.LRU[string, busapi.Session]
	tokenOf *expirable.LRU[string, string] // session id -> token
}

func newSessionCache(size int, ttl time.Duration) *sessionCache {
	return &sessionCache{
		byToken: expirable.NewLRU[string, busapi.Session](size, nil, ttl),
		tokenOf: expirable.NewLRU[string, string](size, nil, ttl),
	}
}

// get returns the cached session of token and, on a miss, the epoch to
// give put.
func (c *sessionCache) get(token string, now time.Time) (busapi.Session, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.byToken.Get(token)
	if ok && now.Before(s.ExpiresAt) {
		c.tokenOf.Get(s.ID) // used: keeps both orders alike
		return s, 0, true
	}
	if ok {
		c.byToken.Remove(token)
		c.tokenOf.Remove(s.ID)
	}
	return busapi.Session{}, c.epoch, false
}

// put stores s unless a session was revoked since epoch.
func (c *sessionCache) put(token string, s busapi.Session, epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch {
		return
	}
	c.byToken.Add(token, s)
	c.tokenOf.Add(s.ID, token)
}

// revoke drops the session with id id.
func (c *sessionCache) revoke(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	if token, ok := c.tokenOf.Peek(id); ok {
		c.byToken.Remove(token)
		c.tokenOf.Remove(id)
	}
}

// forget drops the session of token (logged out through this gateway).
func (c *sessionCache) forget(token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	if s, ok := c.byToken.Peek(token); ok {
		c.tokenOf.Remove(s.ID)
	}
	c.byToken.Remove(token)
}

// CachedSessions is a Client whose Session answers from a cache of
// resolved sessions: for the HTTP API, where every request resolves its
// session. The websocket server keeps using the Client itself, since its
// checks (a new connection, a resync after missed events) are there to ask
// the auth service.
type CachedSessions struct {
	*Client
	cache *sessionCache // nil: no cache
	// revocations counts the sessions revoked on this replica (events and
	// logouts through it), cache or not: see ResolveSession.
	revocations atomic.Uint64
}

// CacheSessions returns c with a cache of at most size sessions, each kept
// at most ttl (and never beyond its expiry); a ttl of 0 (or less) keeps no
// cache. The gateway must call RevokeSession for every session the auth
// service revokes (subjects.AuthSessionRevoked), which drops it at once.
func CacheSessions(c *Client, size int, ttl time.Duration) *CachedSessions {
	cs := &CachedSessions{Client: c}
	if ttl > 0 {
		cs.cache = newSessionCache(size, ttl)
	}
	return cs
}

// Session resolves a session token, from the cache when it holds it.
func (c *CachedSessions) Session(ctx context.Context, token string) (busapi.Session, error) {
	if c.cache == nil {
		return c.Client.Session(ctx, token)
	}
	s, epoch, ok := c.cache.get(token, time.Now())
	if ok {
		return s, nil
	}
	s, err := c.Client.Session(ctx, token)
	if err == nil {
		c.cache.put(token, s, epoch)
	}
	return s, err
}

// ResolveSession resolves a session token as Session does, and also
// returns current, which reports, when called, whether this answer is as
// good as asking the auth service again then: the auth service itself gave
// it (the cache did not hold the session) and no session has been revoked
// on this replica (RevokeSession, Logout) since the lookup began. A new
// websocket registers its connection, where a revocation event would find
// and close it, and then calls current: true means no revocation can have
// slipped between the lookup and the registration, so its own session
// check may stand on this answer (at most the request timeout old) instead
// of asking again. A session served from the cache (possibly revoked with
// its event lost, up to the cache's TTL) always gets false.
func (c *CachedSessions) ResolveSession(ctx context.Context, token string) (s busapi.Session, current func() bool, err error) {
	before := c.revocations.Load()
	if c.cache != nil {
		var epoch uint64
		var ok bool
		if s, epoch, ok = c.cache.get(token, time.Now()); ok {
			return s, func() bool { return false }, nil
		}
		s, err = c.Client.Session(ctx, token)
		if err == nil {
			c.cache.put(token, s, epoch)
		}
	} else {
		s, err = c.Client.Session(ctx, token)
	}
	if err != nil {
		return busapi.Session{}, nil, err
	}
	return s, func() bool { return c.revocations.Load() == before }, nil
}

// Logout revokes a session, and forgets it at once. It forgets it again
// once the auth service has answered: a request that resolved the session
// while the logout was under way is not kept either, even if the
// revocation's announcement is lost.
func (c *CachedSessions) Logout(ctx context.Context, token string) error {
	c.revocations.Add(1)
	defer c.revocations.Add(1)
	if c.cache == nil {
		return c.Client.Logout(ctx, token)
	}
	c.cache.forget(token)
	defer c.cache.forget(token)
	return c.Client.Logout(ctx, token)
}

// RevokeSession drops the session with id id from the cache, if any:
// later requests with its token ask the auth service, which refuses them.
func (c *CachedSessions) RevokeSession(id string) {
	c.revocations.Add(1)
	if c.cache != nil {
		c.cache.revoke(id)
	}
}

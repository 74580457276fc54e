package upstream

import (
	"sync"
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
	epoch   uint64
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
		return s, 0, true
	}
	if ok {
		c.byToken.Remove(token)
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

// CacheSessions makes Session answer from a cache of at most size sessions,
// each kept at most ttl (and never beyond its expiry). The gateway must
// call RevokeSession for every session the auth service revokes
// (subjects.AuthSessionRevoked), which drops it from the cache at once. A
// ttl of 0 (or less) keeps no cache. Call it before serving requests.
func (c *Client) CacheSessions(size int, ttl time.Duration) {
	if ttl > 0 {
		c.sessions = newSessionCache(size, ttl)
	}
}

// RevokeSession drops the session with id id from the cache, if any:
// later requests with its token ask the auth service, which refuses them.
func (c *Client) RevokeSession(id string) {
	if c.sessions != nil {
		c.sessions.revoke(id)
	}
}

package upstream

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/grantcache"
	"github.com/communications/communications/libs/protocol"
)

// sessionCache keeps the sessions this gateway resolved for a short time,
// so that a request does not ask the auth service again. A session the
// auth service revokes (subjects.AuthSessionRevoked, published at logout)
// is dropped at once; should that event be missed (NATS away), an entry
// serves at most ttl after the lookup that resolved it began, and never
// beyond its session's expiry. An entry used late in its ttl (from a point
// drawn between half and nine tenths of it, so that sessions resolved
// together are not resolved again together) is due to be resolved again in
// the background (get says so, once), so a client that keeps making
// requests never waits for the auth service. An entry is resolved in the
// background once: after a lookup that failed (the auth service away), it
// serves to its ttl and the next request then asks in the foreground. At
// most maxBackgroundLookups run at a time; an entry due while they all run
// serves on and is resolved at a later use.
type sessionCache struct {
	ttl time.Duration
	// background holds a token for each background lookup under way.
	background chan struct{}
	// refreshes counts the background lookups get asked for and
	// refreshed has not taken yet (tests wait for them).
	refreshes sync.WaitGroup

	mu sync.Mutex
	// epoch counts revocations: a lookup that started before one may
	// have resolved the revoked session, so it is not stored.
	epoch uint64
	// byToken and tokenOf see the same operations in the same order (an
	// add, a use or a removal of one entry is made in both), so their LRU
	// orders agree and both evict the same session when full: a revocation
	// always finds the token of a session still cached.
	byToken *expirable.LRU[string, cachedSession]
	tokenOf *expirable.LRU[string, string] // session id -> token
	// refreshing holds the tokens being resolved again in the background.
	refreshing map[string]bool
}

// cachedSession is a resolved session, when its lookup began, and from when
// a use is to resolve it again.
type cachedSession struct {
	s                  busapi.Session
	checked, refreshAt time.Time
}

// maxBackgroundLookups bounds the background lookups of one cache.
const maxBackgroundLookups = 64

func newSessionCache(size int, ttl time.Duration) *sessionCache {
	return &sessionCache{
		ttl:        ttl,
		background: make(chan struct{}, maxBackgroundLookups),
		byToken:    expirable.NewLRU[string, cachedSession](size, nil, ttl),
		tokenOf:    expirable.NewLRU[string, string](size, nil, ttl),
		refreshing: map[string]bool{},
	}
}

// lookup is the answer of get.
type lookup struct {
	s  busapi.Session
	ok bool // s is cached and may serve
	// epoch is for put or refreshed, after a lookup begun at the time
	// given to get.
	epoch uint64
	// refresh is set when the caller is to resolve the session again in
	// the background and hand the answer to refreshed.
	refresh bool
	// checked is when the lookup that resolved the cached s began.
	checked time.Time
}

// get returns the cached session of token at time now; on a miss, or when
// the entry is due to be resolved again, the epoch to give put or
// refreshed.
func (c *sessionCache) get(token string, now time.Time) lookup {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byToken.Get(token)
	if ok && now.Before(e.s.ExpiresAt) && now.Sub(e.checked) < c.ttl {
		c.tokenOf.Get(e.s.ID) // used: keeps both orders alike
		l := lookup{s: e.s, ok: true, epoch: c.epoch, checked: e.checked}
		if !now.Before(e.refreshAt) && !c.refreshing[token] && c.tryBackground() {
			c.refreshing[token] = true
			c.refreshes.Add(1)
			l.refresh = true
		}
		return l
	}
	if ok {
		c.byToken.Remove(token)
		c.tokenOf.Remove(e.s.ID)
	}
	return lookup{epoch: c.epoch}
}

// put stores s, resolved by a lookup begun at checked, unless a session was
// revoked since epoch.
func (c *sessionCache) put(token string, s busapi.Session, epoch uint64, checked time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(token, s, epoch, checked)
}

func (c *sessionCache) putLocked(token string, s busapi.Session, epoch uint64, checked time.Time) {
	if epoch != c.epoch {
		return
	}
	c.byToken.Add(token, cachedSession{s: s, checked: checked, refreshAt: checked.Add(grantcache.RefreshAfter(c.ttl))})
	c.tokenOf.Add(s.ID, token)
}

// tryBackground takes a background lookup's token, if one is free.
func (c *sessionCache) tryBackground() bool {
	select {
	case c.background <- struct{}{}:
		return true
	default:
		return false
	}
}

// refreshed takes the answer of a background lookup that get asked for
// (its answer l), begun at checked: the session resolved again is stored
// (unless revoked meanwhile), a session the auth service refuses is
// dropped, and a failure leaves the entry to its ttl, not to be resolved in
// the background again.
func (c *sessionCache) refreshed(token string, l lookup, s busapi.Session, err error, checked time.Time) {
	defer c.refreshes.Done()
	<-c.background
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.refreshing, token)
	switch {
	case err == nil:
		c.putLocked(token, s, l.epoch, checked)
	case busapi.CodeOf(err) == protocol.CodeUnauthorized:
		if e, ok := c.byToken.Peek(token); ok {
			c.tokenOf.Remove(e.s.ID)
		}
		c.byToken.Remove(token)
	default:
		// Kept as it is (unless replaced or dropped meanwhile) until its
		// ttl, from when the next request asks in the foreground: an
		// auth service that fails fast is not asked again at every
		// request. Re-added to both indexes, as put does.
		if e, ok := c.byToken.Peek(token); ok && e.checked.Equal(l.checked) {
			e.refreshAt = e.checked.Add(c.ttl)
			c.byToken.Add(token, e)
			c.tokenOf.Add(e.s.ID, token)
		}
	}
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
	if e, ok := c.byToken.Peek(token); ok {
		c.tokenOf.Remove(e.s.ID)
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

// Session resolves a session token, from the cache when it holds it. A
// cached session in the second half of its ttl is resolved again in the
// background (the bus's own timeout bounds that lookup).
func (c *CachedSessions) Session(ctx context.Context, token string) (busapi.Session, error) {
	if c.cache == nil {
		return c.Client.Session(ctx, token)
	}
	now := time.Now()
	l := c.fromCache(ctx, token, now)
	if l.ok {
		return l.s, nil
	}
	s, err := c.Client.Session(ctx, token)
	if err == nil {
		c.cache.put(token, s, l.epoch, now)
	}
	return s, err
}

// fromCache returns the cache's answer for token at now, and starts the
// background lookup it asks for.
func (c *CachedSessions) fromCache(ctx context.Context, token string, now time.Time) lookup {
	l := c.cache.get(token, now)
	if l.refresh {
		go func() {
			s, err := c.Client.Session(context.WithoutCancel(ctx), token)
			c.cache.refreshed(token, l, s, err, now)
		}()
	}
	return l
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
// its event lost, up to the cache's TTL) always gets false, and so does a
// session that has expired by then.
func (c *CachedSessions) ResolveSession(ctx context.Context, token string) (s busapi.Session, current func() bool, err error) {
	before := c.revocations.Load()
	if c.cache != nil {
		now := time.Now()
		l := c.fromCache(ctx, token, now)
		if l.ok {
			return l.s, func() bool { return false }, nil
		}
		s, err = c.Client.Session(ctx, token)
		if err == nil {
			c.cache.put(token, s, l.epoch, now)
		}
	} else {
		s, err = c.Client.Session(ctx, token)
	}
	if err != nil {
		return busapi.Session{}, nil, err
	}
	return s, func() bool { return c.revocations.Load() == before && time.Now().Before(s.ExpiresAt) }, nil
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

// RevokeSession drops the session with id id from the cache, if any, then
// calls closeConns (if not nil), which is to close the session's
// websockets: later requests with its token ask the auth service, which
// refuses them. The revocation is counted before anything else, so that a
// new websocket whose lookup began before it can no longer stand on that
// lookup (ResolveSession's current) once it is registered: either
// closeConns finds and closes it, or it was registered after closeConns
// began its search and its current reports false.
func (c *CachedSessions) RevokeSession(id string, closeConns func()) {
	c.revocations.Add(1)
	if c.cache != nil {
		c.cache.revoke(id)
	}
	if closeConns != nil {
		closeConns()
	}
}

// Package grantcache remembers for a while that a user is in a chat, so
// that a service asked about the same user and chat again and again (a
// reader paging through a chat, a member sending message after message)
// does not ask the owner of memberships each time. See Cache.
package grantcache

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
)

// Checker answers whether a user is in a chat: nil when they are, an error
// for which the cache's IsRefusal holds when they are not (or the chat does
// not exist), any other error when it could not tell.
type Checker interface {
	Check(ctx context.Context, userID, chatID int64) error
}

// CheckerFunc is a Checker.
type CheckerFunc func(ctx context.Context, userID, chatID int64) error

// Check implements Checker.
func (f CheckerFunc) Check(ctx context.Context, userID, chatID int64) error {
	return f(ctx, userID, chatID)
}

// Options configures a Cache.
type Options struct {
	// Size bounds the grants kept (least recently used leave first);
	// at least 1.
	Size int
	// TTL bounds how long a grant is used after the check that gave it
	// began; more than 0.
	TTL time.Duration
	// Timeout bounds a background check (a foreground check has the
	// caller's context).
	Timeout time.Duration
	// IsRefusal tells a refusal (the user is not in the chat) from a
	// failure to answer.
	IsRefusal func(error) bool
}

// membership is a user in a chat.
type membership struct{ userID, chatID int64 }

// Cache remembers for a short time that a user is in a chat. Only grants
// are kept: a refusal or a failure asks again next time, so a user added to
// a chat is let in at once. A user removed from a chat is refused once
// Removed is called for them (by the owner of memberships at once, and by
// Subscribe when the chat service's event arrives); should that event be
// missed (core NATS is at most once), a grant is used at most TTL after the
// check that gave it began.
//
// A grant used late in its TTL (from a point drawn between half and nine
// tenths of it, so that grants given together are not checked again
// together) is checked again in the background while it still serves, so a
// user who keeps coming never waits for a check; a check that refuses drops
// the grant at once. A grant is checked in the background once: after a
// check that failed (the owner away), it serves to its TTL and the next use
// then asks in the foreground. At most maxBackgroundChecks checks run in
// the background at a time; a grant due while they all run serves on and
// is checked at a later use.
type Cache struct {
	next      Checker
	ttl       time.Duration
	timeout   time.Duration // bound on a background check
	isRefusal func(error) bool
	now       func() time.Time
	// background holds a token for each background check under way.
	background chan struct{}

	mu sync.Mutex
	// epoch counts removals: a check that started before one may have
	// seen the removed member, so its answer is not kept.
	epoch uint64
	// granted holds the grants given, refreshing the ones being checked
	// again in the background.
	granted    *expirable.LRU[membership, grant]
	refreshing map[membership]bool
	// refreshes counts the background checks under way (tests wait for
	// them).
	refreshes sync.WaitGroup
}

// grant is a granted check: when the check that gave it began, and from
// when a use checks it again in the background.
type grant struct{ checked, refreshAt time.Time }

// maxBackgroundChecks bounds the background checks of one cache.
const maxBackgroundChecks = 64

// New returns a cache in front of next.
func New(next Checker, o Options) *Cache {
	if o.Size < 1 {
		o.Size = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.IsRefusal == nil {
		o.IsRefusal = func(error) bool { return false }
	}
	return &Cache{
		next: next, ttl: o.TTL, timeout: o.Timeout, isRefusal: o.IsRefusal, now: time.Now,
		background: make(chan struct{}, maxBackgroundChecks),
		granted:    expirable.NewLRU[membership, grant](o.Size, nil, o.TTL),
		refreshing: map[membership]bool{},
	}
}

// Subscribe drops, from the chat events on subject (busapi.ChatEvent, as
// the chat service publishes them), each removed member's grant; an
// unreadable event drops every grant. Events are few, so the subscription
// has no pending limit (none is dropped for a slow handler). Events missed
// while nc was away cannot be known: every grant is dropped when nc loses
// its server and again when it is connected again. The subscription ends
// when nc is drained or closed.
func (c *Cache) Subscribe(nc *nats.Conn, subject string) error {
	sub, err := nc.Subscribe(subject, func(msg *nats.Msg) {
		var ev busapi.ChatEvent
		if err := json.Unmarshal(msg.Data, &ev); err != nil {
			// Unreadable: forget everything rather than keep what it removed.
			c.Purge()
			return
		}
		c.Removed(ev.Chat.ID, ev.Removed)
	})
	if err != nil {
		return fmt.Errorf("subscribe chat events: %w", err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("subscribe chat events: %w", err)
	}
	status := nc.StatusChanged(nats.RECONNECTING, nats.DISCONNECTED, nats.CONNECTED, nats.CLOSED)
	if nc.IsClosed() { // closed before the listener was there: no CLOSED comes
		nc.RemoveStatusListener(status)
		_ = sub.Unsubscribe()
		return fmt.Errorf("subscribe chat events: %w", nats.ErrConnectionClosed)
	}
	go func() {
		for st := range status {
			switch st {
			case nats.CLOSED:
				nc.RemoveStatusListener(status)
				return
			case nats.CONNECTED:
				// CONNECTED comes before the subscriptions are sent
				// again: a round trip first, so that an event published
				// after the purge reaches this subscription.
				_ = nc.FlushTimeout(c.timeout)
			}
			c.Purge()
		}
	}()
	if err := nc.Flush(); err != nil {
		nc.RemoveStatusListener(status)
		_ = sub.Unsubscribe()
		return fmt.Errorf("subscribe chat events: %w", err)
	}
	return nil
}

// Check returns nil when a grant for user and chat is kept, else asks the
// Checker and keeps its grant.
func (c *Cache) Check(ctx context.Context, userID, chatID int64) error {
	key := membership{userID: userID, chatID: chatID}
	now := c.now()
	c.mu.Lock()
	g, ok := c.granted.Get(key)
	if ok && now.Sub(g.checked) >= c.ttl {
		c.granted.Remove(key)
		ok = false
	}
	epoch := c.epoch
	refresh := ok && !now.Before(g.refreshAt) && !c.refreshing[key] && c.tryBackground()
	if refresh {
		c.refreshing[key] = true
		c.refreshes.Add(1)
	}
	c.mu.Unlock()
	if ok {
		if refresh {
			// Not tied to this request: it has its answer.
			go c.refresh(context.WithoutCancel(ctx), key, g, now, epoch)
		}
		return nil
	}
	if err := c.next.Check(ctx, userID, chatID); err != nil {
		return err
	}
	c.mu.Lock()
	if epoch == c.epoch {
		c.granted.Add(key, c.grant(now))
	}
	c.mu.Unlock()
	return nil
}

// grant returns a grant given by a check begun at checked.
func (c *Cache) grant(checked time.Time) grant {
	return grant{checked: checked, refreshAt: checked.Add(RefreshAfter(c.ttl))}
}

// RefreshAfter returns how long after its check a cached grant (or
// session) of ttl is due to be checked again in the background when used:
// a time drawn between half and nine tenths of ttl.
func RefreshAfter(ttl time.Duration) time.Duration {
	d := ttl / 2
	if spread := ttl * 2 / 5; spread > 0 {
		d += rand.N(spread)
	}
	return d
}

// tryBackground takes a background check's token, if one is free.
func (c *Cache) tryBackground() bool {
	select {
	case c.background <- struct{}{}:
		return true
	default:
		return false
	}
}

// refresh checks grant old again, begun at now, and keeps the new grant
// unless a removal came meanwhile; a refusal drops the grant, a failure
// leaves it to its ttl, not to be checked in the background again.
func (c *Cache) refresh(ctx context.Context, key membership, old grant, now time.Time, epoch uint64) {
	defer c.refreshes.Done()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	err := c.next.Check(ctx, key.userID, key.chatID)
	cancel()
	<-c.background
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.refreshing, key)
	switch {
	case err == nil && epoch == c.epoch:
		c.granted.Add(key, c.grant(now))
	case err != nil && c.isRefusal(err):
		c.granted.Remove(key)
	case err != nil:
		// Kept as it is (unless replaced or dropped meanwhile) until its
		// ttl, from when the next use asks in the foreground: an owner
		// that fails fast is not asked again at every use.
		if g, ok := c.granted.Peek(key); ok && g.checked.Equal(old.checked) {
			g.refreshAt = g.checked.Add(c.ttl)
			c.granted.Add(key, g)
		}
	}
}

// Removed drops the grants of users removed from a chat, and keeps no
// answer of a check under way.
func (c *Cache) Removed(chatID int64, userIDs []int64) {
	if len(userIDs) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	for _, u := range userIDs {
		c.granted.Remove(membership{userID: u, chatID: chatID})
	}
}

// Purge drops every grant, and keeps no answer of a check under way.
func (c *Cache) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	c.granted.Purge()
}

// Len reports how many grants are kept.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.granted.Len()
}

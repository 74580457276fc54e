package natsapi

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
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
)

// membership is a user in a chat.
type membership struct{ userID, chatID int64 }

// CachedAccess remembers for a short time that a user may read a chat, so
// that a reader paging through a chat does not cost the chat service a
// request and a query per page. Only granted access is kept: a refusal or
// a failure asks again next time, so a user added to a chat reads at once.
// A user removed from a chat loses access when the chat service's event
// (subjects.ChatEvents, Removed) arrives; should that event be missed (core
// NATS is at most once), a grant is used at most the cache's ttl after the
// check that gave it began.
//
// A grant used late in its ttl (from a point drawn between half and nine
// tenths of it, so that grants given together are not checked again
// together) is checked again in the background while it still serves, so a
// reader who keeps paging never waits for the chat service (that wait was
// the slowest part of a page at 1,000 pages a second); a check that refuses
// drops the grant at once. A grant is checked in the background once: after
// a check that failed (the chat service away), it serves to its ttl and the
// next page then asks in the foreground. At most maxBackgroundChecks checks
// run in the background at a time; a grant due while they all run serves on
// and is checked at a later use.
type CachedAccess struct {
	next    Access
	ttl     time.Duration
	timeout time.Duration // bound on a background check
	now     func() time.Time
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

// grant is a granted access: when the check that gave it began, and from
// when a use checks it again in the background.
type grant struct{ checked, refreshAt time.Time }

// maxBackgroundChecks bounds the background checks of one cache.
const maxBackgroundChecks = 64

// NewCachedAccess returns a cache of at most size granted checks, each
// kept at most ttl, in front of next, and subscribes on nc to the chat
// events that drop removed members. A background check is bounded by
// timeout (the service's request timeout: a page's own check has it from
// its request; natsbus.DefaultTimeout when zero). The subscription ends
// when nc is drained or closed.
func NewCachedAccess(nc *nats.Conn, subj subjects.Subjects, next Access, size int, ttl, timeout time.Duration) (*CachedAccess, error) {
	if timeout <= 0 {
		timeout = natsbus.DefaultTimeout
	}
	a := &CachedAccess{
		next: next, ttl: ttl, timeout: timeout, now: time.Now,
		background: make(chan struct{}, maxBackgroundChecks),
		granted:    expirable.NewLRU[membership, grant](size, nil, ttl),
		refreshing: map[membership]bool{},
	}
	if _, err := nc.Subscribe(subj.ChatEvents(), func(msg *nats.Msg) {
		var ev busapi.ChatEvent
		if err := json.Unmarshal(msg.Data, &ev); err != nil {
			// Unreadable: forget everything rather than keep what it removed.
			a.purge()
			return
		}
		a.removed(ev.Chat.ID, ev.Removed)
	}); err != nil {
		return nil, fmt.Errorf("subscribe chat events: %w", err)
	}
	if err := nc.Flush(); err != nil {
		return nil, fmt.Errorf("subscribe chat events: %w", err)
	}
	return a, nil
}

// CanRead implements Access.
func (a *CachedAccess) CanRead(ctx context.Context, userID, chatID int64) error {
	key := membership{userID: userID, chatID: chatID}
	now := a.now()
	a.mu.Lock()
	g, ok := a.granted.Get(key)
	if ok && now.Sub(g.checked) >= a.ttl {
		a.granted.Remove(key)
		ok = false
	}
	epoch := a.epoch
	refresh := ok && !now.Before(g.refreshAt) && !a.refreshing[key] && a.tryBackground()
	if refresh {
		a.refreshing[key] = true
		a.refreshes.Add(1)
	}
	a.mu.Unlock()
	if ok {
		if refresh {
			// Not tied to this request: it has its answer.
			go a.refresh(context.WithoutCancel(ctx), key, g, now, epoch)
		}
		return nil
	}
	if err := a.next.CanRead(ctx, userID, chatID); err != nil {
		return err
	}
	a.mu.Lock()
	if epoch == a.epoch {
		a.granted.Add(key, a.grant(now))
	}
	a.mu.Unlock()
	return nil
}

// grant returns a grant given by a check begun at checked.
func (a *CachedAccess) grant(checked time.Time) grant {
	return grant{checked: checked, refreshAt: checked.Add(refreshAfter(a.ttl))}
}

// refreshAfter returns how long after its check a cached grant or session
// of ttl is due to be checked again in the background when used: a time
// drawn between half and nine tenths of ttl.
func refreshAfter(ttl time.Duration) time.Duration {
	d := ttl / 2
	if spread := ttl * 2 / 5; spread > 0 {
		d += rand.N(spread)
	}
	return d
}

// tryBackground takes a background check's token, if one is free.
func (a *CachedAccess) tryBackground() bool {
	select {
	case a.background <- struct{}{}:
		return true
	default:
		return false
	}
}

// refresh checks grant old again, begun at now, and keeps the new grant
// unless a removal came meanwhile; a refusal drops the grant, a failure
// leaves it to its ttl, not to be checked in the background again.
func (a *CachedAccess) refresh(ctx context.Context, key membership, old grant, now time.Time, epoch uint64) {
	defer a.refreshes.Done()
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	err := a.next.CanRead(ctx, key.userID, key.chatID)
	cancel()
	<-a.background
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.refreshing, key)
	switch {
	case err == nil && epoch == a.epoch:
		a.granted.Add(key, a.grant(now))
	case err != nil && isRefusal(err):
		a.granted.Remove(key)
	case err != nil:
		// Kept as it is (unless replaced or dropped meanwhile) until its
		// ttl, from when the next use asks in the foreground: a chat
		// service that fails fast is not asked again at every page.
		if g, ok := a.granted.Peek(key); ok && g.checked.Equal(old.checked) {
			g.refreshAt = g.checked.Add(a.ttl)
			a.granted.Add(key, g)
		}
	}
}

// isRefusal reports whether the chat service refused the access (rather
// than failed to answer).
func isRefusal(err error) bool {
	switch busapi.CodeOf(err) {
	case protocol.CodeChatNotFound, protocol.CodeNotAMember:
		return true
	}
	return false
}

// removed drops the users removed from a chat.
func (a *CachedAccess) removed(chatID int64, userIDs []int64) {
	if len(userIDs) == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.epoch++
	for _, u := range userIDs {
		a.granted.Remove(membership{userID: u, chatID: chatID})
	}
}

func (a *CachedAccess) purge() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.epoch++
	a.granted.Purge()
}

package natsapi

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
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
// NATS is at most once), an entry lives at most the cache's ttl.
type CachedAccess struct {
	next Access

	mu sync.Mutex
	// epoch counts removals: a check that started before one may have
	// seen the removed member, so its answer is not kept.
	epoch   uint64
	granted *expirable.LRU[membership, struct{}]
}

// NewCachedAccess returns a cache of at most size granted checks, each
// kept at most ttl, in front of next, and subscribes on nc to the chat
// events that drop removed members. The subscription ends when nc is
// drained or closed.
func NewCachedAccess(nc *nats.Conn, subj subjects.Subjects, next Access, size int, ttl time.Duration) (*CachedAccess, error) {
	a := &CachedAccess{next: next, granted: expirable.NewLRU[membership, struct{}](size, nil, ttl)}
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
	a.mu.Lock()
	_, ok := a.granted.Get(key)
	epoch := a.epoch
	a.mu.Unlock()
	if ok {
		return nil
	}
	if err := a.next.CanRead(ctx, userID, chatID); err != nil {
		return err
	}
	a.mu.Lock()
	if epoch == a.epoch {
		a.granted.Add(key, struct{}{})
	}
	a.mu.Unlock()
	return nil
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

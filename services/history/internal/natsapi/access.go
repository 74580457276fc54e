package natsapi

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/grantcache"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
)

// CachedAccess remembers for a short time that a user may read a chat
// (grantcache.Cache), so that a reader paging through a chat does not cost
// the chat service a request and a query per page: only grants are kept, a
// removal drops them when the chat service's event arrives, and a grant
// used late in its TTL is checked again in the background while it serves.
type CachedAccess struct {
	cache *grantcache.Cache
}

// NewCachedAccess returns a cache of at most size granted checks, each
// kept at most ttl, in front of next, and subscribes on nc to the chat
// events that drop removed members. A background check is bounded by
// timeout (the service's request timeout: a page's own check has it from
// its request). The subscription ends when nc is drained or closed.
func NewCachedAccess(nc *nats.Conn, subj subjects.Subjects, next Access, size int, ttl, timeout time.Duration) (*CachedAccess, error) {
	cache := grantcache.New(grantcache.CheckerFunc(next.CanRead), grantcache.Options{
		Size: size, TTL: ttl, Timeout: timeout, IsRefusal: isRefusal,
	})
	if err := cache.Subscribe(nc, subj.ChatEvents()); err != nil {
		return nil, err
	}
	return &CachedAccess{cache: cache}, nil
}

// CanRead implements Access.
func (a *CachedAccess) CanRead(ctx context.Context, userID, chatID int64) error {
	return a.cache.Check(ctx, userID, chatID)
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

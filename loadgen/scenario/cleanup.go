package scenario

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/communications/communications/libs/protocol"
)

// CleanupConfig configures Cleanup.
type CleanupConfig struct {
	Target
	// UserPrefix and Users name the users looked at: UserPrefix followed
	// by 000000 to Users-1 ("lg_u", 10,000). Only users whose token is in
	// TokenFile are looked at (no logins).
	UserPrefix string
	Users      int
	TokenFile  string
	Setup      int
	Log        io.Writer
}

// CleanupReport says what Cleanup did.
type CleanupReport struct {
	Users    int64 // users looked at (with a cached token)
	Chats    int64 // chats of earlier runs that still had members
	Removed  int64 // members removed from them
	Failures int64
}

// Cleanup retires the chats that runs from before the scenarios retired
// their own left behind: for each user with a cached token, every chat it
// created whose name starts with "lg-" (all the scenarios' chats except
// the history scenario's "lg-history-", which is kept and reused) loses
// every member but its creator.
func Cleanup(ctx context.Context, cfg CleanupConfig) (*CleanupReport, error) {
	setDefault(&cfg.UserPrefix, "lg_u")
	setDefault(&cfg.Users, 10_000)
	setDefault(&cfg.Setup, 32)
	if len(cfg.Gateways) == 0 {
		return nil, errors.New("cleanup: no gateways")
	}
	cache, err := loadTokens(cfg.TokenFile)
	if err != nil {
		return nil, err
	}
	a := newAPI(cfg.Gateways)
	rep := &CleanupReport{}
	var firstErr atomic.Pointer[error]
	fail := func(err error) {
		atomic.AddInt64(&rep.Failures, 1)
		firstErr.CompareAndSwap(nil, &err)
	}
	start := time.Now()
	err = parallel(ctx, cfg.Users, cfg.Setup, func(ctx context.Context, i int) error {
		name := fmt.Sprintf("%s%06d", cfg.UserPrefix, i)
		token, ok := cache.get(name)
		if !ok {
			return nil
		}
		atomic.AddInt64(&rep.Users, 1)
		var me struct{ User protocol.Member }
		if err := a.do(ctx, i, http.MethodGet, "/api/v1/me", token, nil, &me); err != nil {
			fail(err)
			return nil
		}
		var list struct{ Chats []protocol.Chat }
		if err := a.do(ctx, i, http.MethodGet, "/api/v1/chats", token, nil, &list); err != nil {
			fail(err)
			return nil
		}
		for _, c := range list.Chats {
			if c.CreatorID != me.User.ID || !strings.HasPrefix(c.Name, "lg-") || strings.HasPrefix(c.Name, "lg-history-") {
				continue
			}
			var one struct{ Chat protocol.Chat }
			if err := a.do(ctx, i, http.MethodGet, fmt.Sprintf("/api/v1/chats/%d", c.ID), token, nil, &one); err != nil {
				fail(err)
				continue
			}
			var others []string
			for _, m := range one.Chat.Members {
				if m.ID != me.User.ID {
					others = append(others, m.Username)
				}
			}
			if len(others) == 0 {
				continue
			}
			if err := a.removeMembers(ctx, i, runChat{id: c.ID, token: token, members: others}); err != nil {
				fail(err)
				continue
			}
			atomic.AddInt64(&rep.Chats, 1)
			atomic.AddInt64(&rep.Removed, int64(len(others)))
		}
		return nil
	})
	fmt.Fprintf(cfg.Log, "cleanup: %d users looked at, %d chats retired (%d members removed), %d failures, in %s\n",
		rep.Users, rep.Chats, rep.Removed, rep.Failures, time.Since(start).Round(time.Millisecond))
	if err != nil {
		return rep, err
	}
	if p := firstErr.Load(); p != nil {
		return rep, fmt.Errorf("cleanup: %d failures, the first: %w", rep.Failures, *p)
	}
	return rep, nil
}

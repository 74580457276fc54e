package chats

import (
	"context"
	"fmt"
	"strings"
)

// DirectStart asks for the direct chat of a user with another.
type DirectStart struct {
	UserID int64
	// Username is the user's own name, as the gateway knows it from the
	// session.
	Username string
	// Other is the other user's username, any letter case.
	Other string
}

// StartDirect returns the direct chat of req's user with the user named
// req.Other, creating it when there is none (created says so; the chat is
// then announced like any new chat). There is one direct chat per pair of
// users: asking again, from either side, returns it. Errors:
// ErrInvalidInput (no name, or one's own), ErrUnknownUser.
func (s *Service) StartDirect(ctx context.Context, req DirectStart) (c Chat, created bool, err error) {
	switch {
	case req.UserID <= 0 || req.Username == "":
		return Chat{}, false, refuse(ErrInvalidInput, "the direct chat has no user")
	case req.Other == "":
		return Chat{}, false, refuse(ErrInvalidInput, "give the username of the other user")
	case strings.EqualFold(req.Other, req.Username):
		return Chat{}, false, refuse(ErrInvalidInput, "a direct chat is with another user, not with yourself")
	}
	found, err := s.lookup(ctx, []string{req.Other})
	if err != nil {
		return Chat{}, false, fmt.Errorf("start direct chat: %w", err)
	}
	other := found[0]
	if other.ID == req.UserID {
		return Chat{}, false, refuse(ErrInvalidInput, "a direct chat is with another user, not with yourself")
	}
	c, created, err = s.store.DirectChat(ctx, Member{ID: req.UserID, Username: req.Username}, other)
	if err != nil {
		return Chat{}, false, fmt.Errorf("start direct chat: %w", err)
	}
	if created {
		added := make([]int64, len(c.Members))
		for i, m := range c.Members {
			added[i] = m.ID
		}
		s.announce(ctx, Event{Kind: EventCreated, Chat: c, Added: added})
	}
	return c, created, nil
}

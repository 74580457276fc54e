// Package userdir resolves usernames to users by asking the auth service,
// which owns accounts, over NATS. It implements chats.Users.
package userdir

import (
	"context"
	"errors"
	"fmt"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/services/chat/internal/chats"
)

// Directory looks users up on subjects.AuthUsersLookup.
type Directory struct {
	bus     natsbus.Requester
	subject string
}

// New returns a Directory asking over bus. Each lookup is bounded by its
// context's deadline (the handling of the request it serves).
func New(bus natsbus.Requester, subj subjects.Subjects) *Directory {
	return &Directory{bus: bus, subject: subj.AuthUsersLookup()}
}

// Lookup returns the user of each name, in order. An unknown name is a
// *chats.RequestError wrapping chats.ErrUnknownUser with auth's message,
// which names it; no answer in time wraps natsbus.ErrUnavailable.
func (d *Directory) Lookup(ctx context.Context, usernames []string) ([]chats.Member, error) {
	var resp busapi.UsersLookup
	err := d.bus.Request(ctx, d.subject, busapi.UsersLookupRequest{Usernames: usernames}, &resp)
	if be, ok := errors.AsType[*busapi.Error](err); ok && be.Code == protocol.CodeUnknownUser {
		return nil, &chats.RequestError{Err: chats.ErrUnknownUser, Msg: be.Message}
	}
	if err != nil {
		return nil, fmt.Errorf("look up users: %w", err)
	}
	if len(resp.Users) != len(usernames) {
		return nil, fmt.Errorf("look up users: %d users for %d names", len(resp.Users), len(usernames))
	}
	out := make([]chats.Member, len(resp.Users))
	for i, u := range resp.Users {
		out[i] = chats.Member{ID: u.ID, Username: u.Username}
	}
	return out, nil
}

// Package natsapi is the auth service's NATS transport: it subscribes the
// request subjects, calls the domain and maps its errors to protocol codes.
package natsapi

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/services/auth/internal/accounts"
)

// Register subscribes the auth service's request handlers.
func Register(ctx context.Context, srv *natsbus.Server, subj subjects.Subjects, svc *accounts.Service) ([]*nats.Subscription, error) {
	var subs []*nats.Subscription
	add := func(sub *nats.Subscription, err error) error {
		if err != nil {
			return err
		}
		subs = append(subs, sub)
		return nil
	}
	err := errors.Join(
		add(natsbus.Handle(ctx, srv, subj.AuthRegister(), subjects.QueueAuth,
			func(ctx context.Context, req busapi.RegisterRequest) (busapi.User, error) {
				u, err := svc.Register(ctx, req.Username, req.Password)
				if err != nil {
					return busapi.User{}, mapError(err)
				}
				return user(u), nil
			})),
		add(natsbus.Handle(ctx, srv, subj.AuthLogin(), subjects.QueueAuth,
			func(ctx context.Context, req busapi.LoginRequest) (busapi.Session, error) {
				sess, err := svc.Login(ctx, req.Username, req.Password)
				if err != nil {
					return busapi.Session{}, mapError(err)
				}
				return session(sess), nil
			})),
		add(natsbus.Handle(ctx, srv, subj.AuthLogout(), subjects.QueueAuth,
			func(ctx context.Context, req busapi.SessionRequest) (struct{}, error) {
				if err := svc.Logout(ctx, req.Token); err != nil {
					return struct{}{}, mapError(err)
				}
				return struct{}{}, nil
			})),
		add(natsbus.Handle(ctx, srv, subj.AuthSession(), subjects.QueueAuth,
			func(ctx context.Context, req busapi.SessionRequest) (busapi.Session, error) {
				sess, err := svc.Session(ctx, req.Token)
				if err != nil {
					return busapi.Session{}, mapError(err)
				}
				return session(sess), nil
			})),
		add(natsbus.Handle(ctx, srv, subj.AuthUsersLookup(), subjects.QueueAuth,
			func(ctx context.Context, req busapi.UsersLookupRequest) (busapi.UsersLookup, error) {
				users, err := svc.LookupUsers(ctx, req.Usernames)
				if err != nil {
					return busapi.UsersLookup{}, mapError(err)
				}
				out := busapi.UsersLookup{Users: make([]busapi.User, len(users))}
				for i, u := range users {
					out.Users[i] = user(u)
				}
				return out, nil
			})),
	)
	if err != nil {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
		return nil, err
	}
	return subs, nil
}

func user(u accounts.User) busapi.User { return busapi.User{ID: u.ID, Username: u.Username} }

func session(s accounts.Session) busapi.Session {
	return busapi.Session{Token: s.Token, ID: s.ID, User: user(s.User), ExpiresAt: s.ExpiresAt}
}

// mapError is the one place domain errors become protocol codes.
func mapError(err error) error {
	switch {
	case errors.Is(err, accounts.ErrUsernameTaken):
		return busapi.Errorf(protocol.CodeUsernameTaken, "this username is taken")
	case errors.Is(err, accounts.ErrInvalidUsername), errors.Is(err, accounts.ErrInvalidPassword),
		errors.Is(err, accounts.ErrInvalidLookup):
		// The domain's text says what is wrong and holds no secret.
		return busapi.Errorf(protocol.CodeInvalidInput, err.Error())
	case errors.Is(err, accounts.ErrUnknownUser):
		// The domain's text is `unknown user "<name>"`.
		return busapi.Errorf(protocol.CodeUnknownUser, err.Error())
	case errors.Is(err, accounts.ErrBadCredentials):
		return busapi.Errorf(protocol.CodeBadCredentials, "wrong username or password")
	case errors.Is(err, accounts.ErrSessionNotFound):
		return busapi.Errorf(protocol.CodeUnauthorized, "the session is missing, expired or revoked")
	case errors.Is(err, accounts.ErrOverloaded):
		return fmt.Errorf("%w: %w", busapi.Errorf(protocol.CodeUnavailable, "too many logins at once; retry shortly"), err)
	}
	return fmt.Errorf("%w: %w", busapi.Errorf(protocol.CodeUnavailable, "the request could not be served now; retry"), err)
}

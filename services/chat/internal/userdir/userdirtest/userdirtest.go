// Package userdirtest is a test double of the auth service's users lookup:
// it answers subjects.AuthUsersLookup from a fixed list of users, with the
// auth service's rules (1 to 100 names, any letter case, request order, an
// unknown name fails the lookup with unknown_user naming it). The real
// service is another module; the end-to-end tests use it.
package userdirtest

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
)

// Serve answers users lookups on nc for users until the test ends.
func Serve(t testing.TB, nc *nats.Conn, subj subjects.Subjects, users ...busapi.User) {
	t.Helper()
	byKey := make(map[string]busapi.User, len(users))
	for _, u := range users {
		byKey[strings.ToLower(u.Username)] = u
	}
	srv := natsbus.NewServer(nc, noop.NewTracerProvider(), telemetry.NewLogger(io.Discard, 0), time.Second)
	sub, err := natsbus.Handle(context.Background(), srv, subj.AuthUsersLookup(), subjects.QueueAuth,
		func(_ context.Context, req busapi.UsersLookupRequest) (busapi.UsersLookup, error) {
			if len(req.Usernames) == 0 || len(req.Usernames) > 100 {
				return busapi.UsersLookup{}, busapi.Errorf(protocol.CodeInvalidInput,
					fmt.Sprintf("give 1 to 100 usernames, not %d", len(req.Usernames)))
			}
			out := busapi.UsersLookup{Users: make([]busapi.User, len(req.Usernames))}
			for i, name := range req.Usernames {
				u, ok := byKey[strings.ToLower(name)]
				if !ok {
					return busapi.UsersLookup{}, busapi.Errorf(protocol.CodeUnknownUser, fmt.Sprintf("unknown user %q", name))
				}
				out.Users[i] = u
			}
			return out, nil
		})
	if err != nil {
		t.Fatalf("serve users lookup: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("serve users lookup: %v", err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

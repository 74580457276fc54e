package natsapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/auth/internal/accounts"
	"github.com/communications/communications/services/auth/internal/authstore"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestMapError(t *testing.T) {
	t.Parallel()
	cause := errors.New("connection refused")
	tests := []struct {
		name       string
		err        error
		want       protocol.Code
		wantCause  bool // the cause is kept, to be logged
		wantInText string
	}{
		{name: "taken", err: accounts.ErrUsernameTaken, want: protocol.CodeUsernameTaken},
		{name: "invalid username", err: fmt.Errorf("%w: must be 3 to 32 characters long", accounts.ErrInvalidUsername),
			want: protocol.CodeInvalidInput, wantInText: "3 to 32"},
		{name: "invalid password", err: fmt.Errorf("%w: too short", accounts.ErrInvalidPassword),
			want: protocol.CodeInvalidInput, wantInText: "too short"},
		{name: "bad credentials", err: accounts.ErrBadCredentials, want: protocol.CodeBadCredentials},
		{name: "no session", err: accounts.ErrSessionNotFound, want: protocol.CodeUnauthorized},
		{name: "overloaded", err: fmt.Errorf("login: %w: %w", accounts.ErrOverloaded, context.DeadlineExceeded),
			want: protocol.CodeUnavailable, wantCause: true},
		{name: "other", err: fmt.Errorf("login: %w", cause), want: protocol.CodeUnavailable, wantCause: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := mapError(tc.err)
			if code := busapi.CodeOf(got); code != tc.want {
				t.Errorf("code = %q, want %q", code, tc.want)
			}
			be, _ := errors.AsType[*busapi.Error](got)
			if plain := error(be) == got; plain == tc.wantCause {
				t.Errorf("error %v: cause kept = %v, want %v", got, !plain, tc.wantCause)
			}
			if !strings.Contains(be.Message, tc.wantInText) {
				t.Errorf("message %q does not contain %q", be.Message, tc.wantInText)
			}
			if strings.Contains(be.Message, cause.Error()) {
				t.Errorf("message %q leaks an internal error", be.Message)
			}
		})
	}
}

// newClient serves the auth handlers on an embedded NATS server and a fresh
// database, and returns a client and the subjects.
func newClient(t *testing.T) (*natsbus.Client, subjects.Subjects) {
	t.Helper()
	ctx := context.Background()
	tp := noop.NewTracerProvider()
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	pool, err := pgdb.Open(ctx, testenv.Postgres(t), 4, tp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := pgdb.Migrate(ctx, pool, authstore.Migrations(), authstore.MigrationTable, log); err != nil {
		t.Fatal(err)
	}
	svc, err := accounts.NewService(authstore.New(pool), accounts.Config{})
	if err != nil {
		t.Fatal(err)
	}

	ns := testenv.NATS(t)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	serverConn, err := natsbus.Connect(ns.ClientURL(), "auth-test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(serverConn.Close)
	srv := natsbus.NewServer(serverConn, tp, log, 5*time.Second)
	if _, err := Register(ctx, srv, subj, svc); err != nil {
		t.Fatal(err)
	}
	if err := serverConn.Flush(); err != nil {
		t.Fatal(err)
	}
	clientConn, err := natsbus.Connect(ns.ClientURL(), "auth-test-client", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(clientConn.Close)
	return natsbus.NewClient(clientConn, tp), subj
}

func TestHandlers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, subj := newClient(t)

	var alice busapi.User
	if err := c.Request(ctx, subj.AuthRegister(), busapi.RegisterRequest{Username: "Alice", Password: "password-1"}, &alice); err != nil {
		t.Fatal(err)
	}
	if alice.ID <= 0 || alice.Username != "Alice" {
		t.Fatalf("registered %+v, want a positive id and username Alice", alice)
	}
	var sess busapi.Session
	if err := c.Request(ctx, subj.AuthLogin(), busapi.LoginRequest{Username: "ALICE", Password: "password-1"}, &sess); err != nil {
		t.Fatal(err)
	}
	if sess.Token == "" || sess.User != alice || time.Until(sess.ExpiresAt) < 719*time.Hour {
		t.Fatalf("login gave %+v, want a token, user %+v and a 720h session", sess, alice)
	}

	tests := []struct {
		name     string
		subject  string
		req      any
		want     any // with the reply decoded into a value of its type
		wantCode protocol.Code
	}{
		{name: "register taken", subject: subj.AuthRegister(),
			req: busapi.RegisterRequest{Username: "alice", Password: "password-2"}, wantCode: protocol.CodeUsernameTaken},
		{name: "register bad username", subject: subj.AuthRegister(),
			req: busapi.RegisterRequest{Username: "a b", Password: "password-2"}, wantCode: protocol.CodeInvalidInput},
		{name: "register short password", subject: subj.AuthRegister(),
			req: busapi.RegisterRequest{Username: "bob", Password: "pw"}, wantCode: protocol.CodeInvalidInput},
		{name: "malformed request", subject: subj.AuthRegister(), req: []int{1}, wantCode: protocol.CodeBadRequest},
		{name: "login wrong password", subject: subj.AuthLogin(),
			req: busapi.LoginRequest{Username: "alice", Password: "password-2"}, wantCode: protocol.CodeBadCredentials},
		{name: "login unknown user", subject: subj.AuthLogin(),
			req: busapi.LoginRequest{Username: "carol", Password: "password-1"}, wantCode: protocol.CodeBadCredentials},
		{name: "session", subject: subj.AuthSession(), req: busapi.SessionRequest{Token: sess.Token},
			want: busapi.Session{User: alice, ExpiresAt: sess.ExpiresAt}},
		{name: "session unknown token", subject: subj.AuthSession(),
			req: busapi.SessionRequest{Token: strings.Repeat("A", 43)}, wantCode: protocol.CodeUnauthorized},
		{name: "session empty token", subject: subj.AuthSession(), req: busapi.SessionRequest{}, wantCode: protocol.CodeUnauthorized},
		{name: "logout unknown token", subject: subj.AuthLogout(),
			req: busapi.SessionRequest{Token: strings.Repeat("A", 43)}, wantCode: protocol.CodeUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got busapi.Session
			err := c.Request(ctx, tc.subject, tc.req, &got)
			if code := codeOrEmpty(err); code != tc.wantCode {
				t.Fatalf("error %v: code %q, want %q", err, code, tc.wantCode)
			}
			if tc.want != nil {
				if diff := cmp.Diff(tc.want, got, cmpopts.EquateApproxTime(0)); diff != "" {
					t.Errorf("reply (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func codeOrEmpty(err error) protocol.Code {
	if err == nil {
		return ""
	}
	return busapi.CodeOf(err)
}

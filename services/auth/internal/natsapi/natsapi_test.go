package natsapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/auth/internal/accounts"
	"github.com/communications/communications/services/auth/internal/authevents"
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
		{name: "unknown user", err: fmt.Errorf("%w %q", accounts.ErrUnknownUser, "Dave"),
			want: protocol.CodeUnknownUser, wantInText: `unknown user "Dave"`},
		{name: "invalid lookup", err: fmt.Errorf("%w: give 1 to 100 usernames, not 0", accounts.ErrInvalidLookup),
			want: protocol.CodeInvalidInput, wantInText: "1 to 100"},
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

// testClient talks to the auth handlers as the gateway and the chat service
// do.
type testClient struct {
	*natsbus.Client
	nc   *nats.Conn // the client's connection, for subscriptions
	subj subjects.Subjects
}

// newClient serves the auth handlers on an embedded NATS server and a fresh
// database, publishing their events on the server's connection, and returns
// a client.
func newClient(t *testing.T) testClient {
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
	svc, err := accounts.NewService(authstore.New(pool), authevents.New(serverConn, subj), log, accounts.Config{})
	if err != nil {
		t.Fatal(err)
	}
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
	return testClient{Client: natsbus.NewClient(clientConn, tp), nc: clientConn, subj: subj}
}

// hexSHA256 is the expected session id of token, computed independently.
func hexSHA256(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func TestHandlers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newClient(t)
	subj := c.subj

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
	if want := hexSHA256(sess.Token); sess.ID != want {
		t.Fatalf("login gave session id %q, want the hex SHA-256 of the token %q", sess.ID, want)
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
			want: busapi.Session{ID: hexSHA256(sess.Token), User: alice, ExpiresAt: sess.ExpiresAt}},
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

// TestLogoutEvent checks that a logout announces the revoked session to
// every subscriber, and that a refused logout announces nothing.
func TestLogoutEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newClient(t)
	// Subscribed before any logout, as every gateway is.
	events, err := c.nc.SubscribeSync(c.subj.AuthSessionRevoked())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var alice busapi.User
	if err := c.Request(ctx, c.subj.AuthRegister(), busapi.RegisterRequest{Username: "alice", Password: "password-1"}, &alice); err != nil {
		t.Fatal(err)
	}
	login := func() busapi.Session {
		t.Helper()
		var sess busapi.Session
		if err := c.Request(ctx, c.subj.AuthLogin(), busapi.LoginRequest{Username: "alice", Password: "password-1"}, &sess); err != nil {
			t.Fatal(err)
		}
		return sess
	}
	next := func() busapi.SessionRevoked {
		t.Helper()
		msg, err := events.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("no event on %s: %v", c.subj.AuthSessionRevoked(), err)
		}
		var ev busapi.SessionRevoked
		if err := json.Unmarshal(msg.Data, &ev); err != nil {
			t.Fatalf("event %q: %v", msg.Data, err)
		}
		return ev
	}

	first, second := login(), login()
	if err := c.Request(ctx, c.subj.AuthLogout(), busapi.SessionRequest{Token: first.Token}, nil); err != nil {
		t.Fatal(err)
	}
	want := busapi.SessionRevoked{SessionID: hexSHA256(first.Token), UserID: alice.ID}
	if diff := cmp.Diff(want, next()); diff != "" {
		t.Errorf("event of the first logout (-want +got):\n%s", diff)
	}

	// A second logout of the same session is refused and announces
	// nothing: the next event is the other session's, which the server
	// published later on the same connection.
	err = c.Request(ctx, c.subj.AuthLogout(), busapi.SessionRequest{Token: first.Token}, nil)
	if code := codeOrEmpty(err); code != protocol.CodeUnauthorized {
		t.Fatalf("second logout: error %v, want code %q", err, protocol.CodeUnauthorized)
	}
	if err := c.Request(ctx, c.subj.AuthLogout(), busapi.SessionRequest{Token: second.Token}, nil); err != nil {
		t.Fatal(err)
	}
	want = busapi.SessionRevoked{SessionID: hexSHA256(second.Token), UserID: alice.ID}
	if diff := cmp.Diff(want, next()); diff != "" {
		t.Errorf("event after the refused logout (-want +got):\n%s", diff)
	}
}

func TestUsersLookup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newClient(t)
	users := map[string]busapi.User{}
	for _, name := range []string{"Alice", "bob", "Carol.C"} {
		var u busapi.User
		if err := c.Request(ctx, c.subj.AuthRegister(), busapi.RegisterRequest{Username: name, Password: "password-1"}, &u); err != nil {
			t.Fatal(err)
		}
		users[name] = u
	}
	alice, bob, carol := users["Alice"], users["bob"], users["Carol.C"]

	tests := []struct {
		name     string
		req      any
		want     []busapi.User
		wantCode protocol.Code
		wantText string
	}{
		{name: "request order", req: busapi.UsersLookupRequest{Usernames: []string{"Carol.C", "Alice", "bob"}},
			want: []busapi.User{carol, alice, bob}},
		{name: "any letter case", req: busapi.UsersLookupRequest{Usernames: []string{"alice", "BOB", "cArOl.C"}},
			want: []busapi.User{alice, bob, carol}},
		{name: "repeated", req: busapi.UsersLookupRequest{Usernames: []string{"bob", "Bob"}}, want: []busapi.User{bob, bob}},
		{name: "the most", req: busapi.UsersLookupRequest{Usernames: slices.Repeat([]string{"ALICE"}, 100)},
			want: slices.Repeat([]busapi.User{alice}, 100)},
		{name: "unknown", req: busapi.UsersLookupRequest{Usernames: []string{"alice", "Dave", "Eve"}},
			wantCode: protocol.CodeUnknownUser, wantText: `unknown user "Dave"`},
		{name: "invalid name", req: busapi.UsersLookupRequest{Usernames: []string{"bob", "no way", "Dave"}},
			wantCode: protocol.CodeUnknownUser, wantText: `unknown user "no way"`},
		{name: "too many", req: busapi.UsersLookupRequest{Usernames: slices.Repeat([]string{"alice"}, 101)},
			wantCode: protocol.CodeInvalidInput},
		{name: "empty", req: busapi.UsersLookupRequest{Usernames: []string{}}, wantCode: protocol.CodeInvalidInput},
		{name: "no names", req: map[string]any{}, wantCode: protocol.CodeInvalidInput},
		{name: "malformed", req: map[string]any{"usernames": "alice"}, wantCode: protocol.CodeBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got busapi.UsersLookup
			err := c.Request(ctx, c.subj.AuthUsersLookup(), tc.req, &got)
			if code := codeOrEmpty(err); code != tc.wantCode {
				t.Fatalf("error %v: code %q, want %q", err, code, tc.wantCode)
			}
			if be, ok := errors.AsType[*busapi.Error](err); ok && tc.wantText != "" && be.Message != tc.wantText {
				t.Errorf("message %q, want %q", be.Message, tc.wantText)
			}
			if diff := cmp.Diff(tc.want, got.Users); diff != "" {
				t.Errorf("users (-want +got):\n%s", diff)
			}
		})
	}
}

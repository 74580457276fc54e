package authsvc_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/config"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/auth/authsvc"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestConfig(t *testing.T) {
	t.Parallel()
	cfg, err := config.LoadFrom[authsvc.Config](authsvc.EnvPrefix, map[string]string{})
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	want := authsvc.Config{
		NATSURL:             "nats://127.0.0.1:4222",
		PostgresURL:         "postgres://postgres@127.0.0.1:5432/communications?sslmode=disable",
		PostgresMaxConn:     8,
		SubjectPrefix:       "comms",
		DebugAddr:           "127.0.0.1:9101",
		RequestTimeout:      5 * time.Second,
		ShutdownTimeout:     20 * time.Second,
		SessionTTL:          720 * time.Hour,
		MaxConcurrentHashes: 2,
		TraceSampleRatio:    1,
		LogLevel:            "info",
	}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name string
		env  map[string]string
	}{
		{name: "bad prefix", env: map[string]string{"AUTH_SUBJECT_PREFIX": "a.*"}},
		{name: "zero timeout", env: map[string]string{"AUTH_REQUEST_TIMEOUT": "0s"}},
		{name: "short ttl", env: map[string]string{"AUTH_SESSION_TTL": "1s"}},
		{name: "no hashes", env: map[string]string{"AUTH_MAX_CONCURRENT_HASHES": "0"}},
		{name: "not a duration", env: map[string]string{"AUTH_SESSION_TTL": "forever"}},
		{name: "no traces sampled", env: map[string]string{"AUTH_TRACE_SAMPLE_RATIO": "0"}},
		{name: "sample ratio above 1", env: map[string]string{"AUTH_TRACE_SAMPLE_RATIO": "1.5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := config.LoadFrom[authsvc.Config](authsvc.EnvPrefix, tc.env); err == nil {
				t.Errorf("LoadFrom(%v) succeeded, want an error", tc.env)
			}
		})
	}
}

// freeAddr returns a local address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestRun starts the service in-process on a fresh database and an embedded
// NATS server, and talks to it as the gateway does.
func TestRun(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	prefix := testenv.SubjectPrefix()
	debugAddr := freeAddr(t)
	cfg, err := config.LoadFrom[authsvc.Config](authsvc.EnvPrefix, map[string]string{
		"AUTH_NATS_URL":         ns.ClientURL(),
		"AUTH_POSTGRES_URL":     testenv.Postgres(t),
		"AUTH_SUBJECT_PREFIX":   prefix,
		"AUTH_DEBUG_ADDR":       debugAddr,
		"AUTH_SHUTDOWN_TIMEOUT": "5s",
	})
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.LogBuffer{}
	tel, err := telemetry.New(context.Background(), telemetry.Config{ServiceName: "auth", LogLevel: "debug"}, io.MultiWriter(t.Output(), logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- authsvc.Run(ctx, cfg, tel) }()

	ready := func() bool {
		select {
		case err := <-done:
			t.Fatalf("Run returned before it was ready: %v", err)
		default:
		}
		resp, err := http.Get("http://" + debugAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	testenv.Eventually(t, 30*time.Second, ready, "auth service ready on %s", debugAddr)

	nc, err := natsbus.Connect(ns.ClientURL(), "gateway-test", tel.Logger)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := natsbus.NewClient(nc, tel.TracerProvider)
	subj, err := subjects.New(prefix)
	if err != nil {
		t.Fatal(err)
	}
	request := func(subject string, req, resp any) protocol.Code {
		t.Helper()
		err := c.Request(ctx, subject, req, resp)
		if err == nil {
			return ""
		}
		return busapi.CodeOf(err)
	}
	expect := func(step string, got, want protocol.Code) {
		t.Helper()
		if got != want {
			t.Fatalf("%s: code %q, want %q", step, got, want)
		}
	}

	// Every gateway subscribes to revoked sessions before any logout.
	revocations, err := nc.SubscribeSync(subj.AuthSessionRevoked())
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	var user busapi.User
	expect("register", request(subj.AuthRegister(), busapi.RegisterRequest{Username: "Alice", Password: "s3cret-pass"}, &user), "")
	expect("register other case", request(subj.AuthRegister(), busapi.RegisterRequest{Username: "aLiCe", Password: "other-pass"}, nil),
		protocol.CodeUsernameTaken)
	expect("wrong password", request(subj.AuthLogin(), busapi.LoginRequest{Username: "alice", Password: "wrong-pass"}, nil),
		protocol.CodeBadCredentials)
	expect("unknown user", request(subj.AuthLogin(), busapi.LoginRequest{Username: "bob", Password: "s3cret-pass"}, nil),
		protocol.CodeBadCredentials)
	var sess busapi.Session
	expect("login", request(subj.AuthLogin(), busapi.LoginRequest{Username: "alice", Password: "s3cret-pass"}, &sess), "")
	if sess.Token == "" || sess.User != user {
		t.Fatalf("login gave user %+v and token set %v; want user %+v and a token", sess.User, sess.Token != "", user)
	}
	sum := sha256.Sum256([]byte(sess.Token))
	sessionID := hex.EncodeToString(sum[:])
	if sess.ID != sessionID {
		t.Errorf("login gave session id %q, want the hex SHA-256 of the token %q", sess.ID, sessionID)
	}
	var looked busapi.Session
	expect("session", request(subj.AuthSession(), busapi.SessionRequest{Token: sess.Token}, &looked), "")
	want := busapi.Session{ID: sessionID, User: busapi.User{ID: user.ID, Username: "Alice"}, ExpiresAt: sess.ExpiresAt}
	if diff := cmp.Diff(want, looked); diff != "" {
		t.Errorf("session (-want +got):\n%s", diff)
	}

	// The chat service resolves member names.
	var bob busapi.User
	expect("register bob", request(subj.AuthRegister(), busapi.RegisterRequest{Username: "bob", Password: "s3cret-pass"}, &bob), "")
	var lookup busapi.UsersLookup
	expect("lookup", request(subj.AuthUsersLookup(), busapi.UsersLookupRequest{Usernames: []string{"BOB", "alice"}}, &lookup), "")
	if diff := cmp.Diff([]busapi.User{bob, user}, lookup.Users); diff != "" {
		t.Errorf("lookup (-want +got):\n%s", diff)
	}
	expect("lookup unknown", request(subj.AuthUsersLookup(), busapi.UsersLookupRequest{Usernames: []string{"alice", "carol"}}, nil),
		protocol.CodeUnknownUser)

	// Logout, in a trace of its own: the revocation reaches every
	// subscriber, carrying that trace.
	logoutCtx, span := tel.TracerProvider.Tracer("authsvc_test").Start(ctx, "logout")
	err = c.Request(logoutCtx, subj.AuthLogout(), busapi.SessionRequest{Token: sess.Token}, nil)
	span.End()
	if err != nil {
		t.Fatalf("logout: %v", err)
	}
	msg, err := revocations.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no event on %s after logout: %v", subj.AuthSessionRevoked(), err)
	}
	var revoked busapi.SessionRevoked
	if err := json.Unmarshal(msg.Data, &revoked); err != nil {
		t.Fatalf("event %q: %v", msg.Data, err)
	}
	if diff := cmp.Diff(busapi.SessionRevoked{SessionID: sessionID, UserID: user.ID}, revoked); diff != "" {
		t.Errorf("revocation event (-want +got):\n%s", diff)
	}
	if got, want := trace.SpanContextFromContext(natsbus.Extract(ctx, msg)).TraceID(), span.SpanContext().TraceID(); !want.IsValid() || got != want {
		t.Errorf("revocation event in trace %s, want the logout's trace %s", got, want)
	}
	expect("session after logout", request(subj.AuthSession(), busapi.SessionRequest{Token: sess.Token}, nil),
		protocol.CodeUnauthorized)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancellation: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of cancellation")
	}
	for _, secret := range []string{"s3cret-pass", "wrong-pass", "other-pass", sess.Token} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds the secret %q", secret)
		}
	}
}

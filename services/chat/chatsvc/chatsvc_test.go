package chatsvc_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/config"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/chat/chatsvc"
	"github.com/communications/communications/services/chat/internal/userdir/userdirtest"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		wantErr bool
	}{
		{name: "defaults", env: map[string]string{}},
		{name: "bad prefix", env: map[string]string{"CHAT_SUBJECT_PREFIX": "a.*"}, wantErr: true},
		{name: "zero timeout", env: map[string]string{"CHAT_REQUEST_TIMEOUT": "0s"}, wantErr: true},
		{name: "no stream replicas", env: map[string]string{"CHAT_STREAM_REPLICAS": "0"}, wantErr: true},
		{name: "tiny stream", env: map[string]string{"CHAT_STREAM_MAX_BYTES": "1024"}, wantErr: true},
		{name: "one publish in flight", env: map[string]string{"CHAT_PUBLISH_IN_FLIGHT": "1"}},
		{name: "no publish in flight", env: map[string]string{"CHAT_PUBLISH_IN_FLIGHT": "0"}, wantErr: true},
		{name: "too many publishes in flight", env: map[string]string{"CHAT_PUBLISH_IN_FLIGHT": "33"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.LoadFrom[chatsvc.Config](chatsvc.EnvPrefix, tc.env)
			if (err != nil) != tc.wantErr {
				t.Errorf("LoadFrom(%v) error = %v, want an error: %v", tc.env, err, tc.wantErr)
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

// TestRun starts the service in-process, as main does, and creates a chat
// over NATS as the gateway does, with the users lookup answered by a test
// double of the auth service.
func TestRun(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	debugAddr := freeAddr(t)
	cfg, err := config.LoadFrom[chatsvc.Config](chatsvc.EnvPrefix, map[string]string{
		"CHAT_NATS_URL":         ns.ClientURL(),
		"CHAT_POSTGRES_URL":     testenv.Postgres(t),
		"CHAT_SUBJECT_PREFIX":   testenv.SubjectPrefix(),
		"CHAT_DEBUG_ADDR":       debugAddr,
		"CHAT_SHUTDOWN_TIMEOUT": "5s",
		"CHAT_LOG_LEVEL":        "warn",
	})
	if err != nil {
		t.Fatal(err)
	}
	subj, err := subjects.New(cfg.SubjectPrefix)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	alice, bob := busapi.User{ID: 1, Username: "alice"}, busapi.User{ID: 2, Username: "bob"}
	userdirtest.Serve(t, nc, subj, alice, bob)
	events, err := nc.SubscribeSync(subj.ChatEvents())
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	tel, err := telemetry.New(context.Background(), telemetry.Config{ServiceName: "chat", LogLevel: "warn"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- chatsvc.Run(ctx, cfg, tel) }()
	testenv.Eventually(t, 30*time.Second, func() bool {
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
	}, "chat service ready on %s", debugAddr)

	client := natsbus.NewClient(nc, noop.NewTracerProvider())
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	var team busapi.Chat
	if err := client.Request(rctx, subj.ChatCreate(), busapi.CreateChatRequest{
		CreatorID: alice.ID, CreatorName: alice.Username, Name: "team", Members: []string{"bob"},
	}, &team); err != nil {
		t.Fatalf("create: %v", err)
	}
	if len(team.Members) != 2 || team.CreatorID != alice.ID {
		t.Errorf("created %+v, want creator alice and two members", team)
	}
	msg, err := events.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no chat event: %v", err)
	}
	var ev busapi.ChatEvent
	if err := json.Unmarshal(msg.Data, &ev); err != nil || ev.Kind != "created" || ev.Chat.ID != team.ID {
		t.Errorf("event %s (%v), want the creation of chat %d", msg.Data, err, team.ID)
	}
	var res busapi.SendResult
	if err := client.Request(rctx, subj.ChatSend(), busapi.SendRequest{
		ChatID: team.ID, SenderID: bob.ID, Sender: bob.Username, ClientMsgID: "b-1", Text: "hi",
	}, &res); err != nil {
		t.Errorf("member's send: %v", err)
	}
	err = client.Request(rctx, subj.ChatSend(), busapi.SendRequest{
		ChatID: team.ID, SenderID: 3, Sender: "carol", ClientMsgID: "c-1", Text: "hi",
	}, &res)
	if code := busapi.CodeOf(err); code != protocol.CodeNotAMember {
		t.Errorf("non-member's send: %v, want %s", err, protocol.CodeNotAMember)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancellation: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of cancellation")
	}
}

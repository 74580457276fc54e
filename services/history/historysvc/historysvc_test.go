package historysvc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/config"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/history/historysvc"
	"github.com/communications/communications/services/history/internal/msgstore"
	"github.com/communications/communications/services/history/internal/streamtest"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{name: "defaults"},
		{name: "bad subject prefix", env: map[string]string{"HISTORY_SUBJECT_PREFIX": "a b"}, wantErr: "SUBJECT_PREFIX"},
		{name: "bad redis url", env: map[string]string{"HISTORY_REDIS_URL": "http://x"}, wantErr: "REDIS_URL"},
		{name: "redis prefix with a space", env: map[string]string{"HISTORY_REDIS_PREFIX": "a b"}, wantErr: "REDIS_PREFIX"},
		{name: "batch too large", env: map[string]string{"HISTORY_BATCH_SIZE": "100000"}, wantErr: "BATCH_SIZE"},
		{name: "no batch wait", env: map[string]string{"HISTORY_BATCH_WAIT": "0s"}, wantErr: "BATCH_WAIT"},
		{name: "short leader ttl", env: map[string]string{"HISTORY_LEADER_TTL": "100ms"}, wantErr: "LEADER_TTL"},
		{name: "no timeout", env: map[string]string{"HISTORY_REQUEST_TIMEOUT": "0s"}, wantErr: "REQUEST_TIMEOUT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{}
			for k, v := range tc.env {
				env[k] = v
			}
			cfg, err := config.LoadFrom[historysvc.Config](historysvc.EnvPrefix, env)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("load: %v", err)
				}
				if cfg.BatchSize != 2000 || cfg.BatchWait != 10*time.Millisecond || cfg.LeaderTTL != 5*time.Second || cfg.RedisPrefix != "comms" {
					t.Errorf("defaults not applied: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want one naming %s", err, tc.wantErr)
			}
		})
	}
}

func TestRun(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	redisURL, redisPrefix := testenv.Redis(t)
	cfg, err := config.LoadFrom[historysvc.Config](historysvc.EnvPrefix, map[string]string{
		"HISTORY_NATS_URL":       ns.ClientURL(),
		"HISTORY_POSTGRES_URL":   testenv.Postgres(t),
		"HISTORY_REDIS_URL":      redisURL,
		"HISTORY_REDIS_PREFIX":   strings.TrimSuffix(redisPrefix, ":"),
		"HISTORY_SUBJECT_PREFIX": testenv.SubjectPrefix(),
		"HISTORY_DEBUG_ADDR":     "127.0.0.1:0",
		"HISTORY_LOG_LEVEL":      "warn",
	})
	if err != nil {
		t.Fatal(err)
	}
	subj, err := subjects.New(cfg.SubjectPrefix)
	if err != nil {
		t.Fatal(err)
	}
	js := streamtest.Connect(t, ns.ClientURL())
	streamtest.CreateStream(t, js, subj)
	tel, err := telemetry.New(context.Background(), telemetry.Config{ServiceName: "history", LogLevel: "warn"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- historysvc.Run(ctx, cfg, tel) }()
	t.Cleanup(cancel)

	for i := range 12 {
		m := busapi.StreamMessage{ChatID: 3, SenderID: 1, Sender: "ann", ClientMsgID: fmt.Sprint(i), Text: fmt.Sprint("m", i+1), AcceptedAt: time.Now()}
		streamtest.Publish(context.Background(), t, js, subj, m, streamtest.MsgID(m))
	}

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	client := natsbus.NewClient(nc, noop.NewTracerProvider())
	// The chat service's access check, played by a stand-in: user 1 is a
	// member of chat 3, user 2 is not, chat 99 does not exist.
	chatSrv := natsbus.NewServer(nc, noop.NewTracerProvider(), tel.Logger, time.Second)
	if _, err := natsbus.Handle(context.Background(), chatSrv, subj.ChatAccess(), subjects.QueueChat,
		func(_ context.Context, req busapi.ChatRequest) (struct{}, error) {
			switch {
			case req.ChatID != 3:
				return struct{}{}, busapi.Errorf(protocol.CodeChatNotFound, "no such chat")
			case req.UserID != 1:
				return struct{}{}, busapi.Errorf(protocol.CodeNotAMember, "not a member")
			}
			return struct{}{}, nil
		}); err != nil {
		t.Fatal(err)
	}
	page := func(req busapi.HistoryRequest) (busapi.HistoryPage, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var p busapi.HistoryPage
		err := client.Request(ctx, subj.HistoryPage(), req, &p)
		return p, err
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		p, err := page(busapi.HistoryRequest{UserID: 1, ChatID: 3, Limit: 100})
		return err == nil && len(p.Messages) == 12
	}, "the 12 messages are not all in history")

	p, err := page(busapi.HistoryRequest{UserID: 1, ChatID: 3, BeforeSeq: 10, Limit: 4})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []string
	for _, m := range p.Messages {
		seqs = append(seqs, fmt.Sprintf("%d:%s", m.Seq, m.Text))
	}
	if got, want := strings.Join(seqs, " "), "6:m6 7:m7 8:m8 9:m9"; got != want {
		t.Errorf("page before 10 = %s, want %s", got, want)
	}
	// A page's wire format is encoding/json's (v1) encoding of a
	// busapi.HistoryPage, byte for byte (the gateway passes it on as it
	// is); an empty page has an empty list, not null.
	for _, req := range []busapi.HistoryRequest{
		{UserID: 1, ChatID: 3, BeforeSeq: 10, Limit: 4},
		{UserID: 1, ChatID: 3, Limit: 100},
		{UserID: 1, ChatID: 3, BeforeSeq: 1},
		{UserID: 1, ChatID: 3, AfterSeq: 12},
	} {
		raw, err := client.RequestJSON(context.Background(), subj.HistoryPage(), req)
		if err != nil {
			t.Fatal(err)
		}
		var decoded busapi.HistoryPage
		if err := json.Unmarshal(raw, &decoded); err != nil {
			t.Fatalf("page %+v: %v", req, err)
		}
		want, err := json.Marshal(decoded)
		if err != nil {
			t.Fatal(err)
		}
		if string(raw) != string(want) {
			t.Errorf("page %+v on the wire:\n%s\nencoding/json encodes it as\n%s", req, raw, want)
		}
		if len(decoded.Messages) == 0 && string(raw) != `{"messages":[]}` {
			t.Errorf("empty page %+v = %s, want an empty list", req, raw)
		}
	}
	var latest busapi.Latest
	if err := client.Request(context.Background(), subj.HistoryLatest(), busapi.LatestRequest{ChatIDs: []int64{3, 4}}, &latest); err != nil {
		t.Fatal(err)
	}
	if len(latest.Seqs) != 1 || latest.Seqs["3"] != 12 {
		t.Errorf("latest = %v, want chat 3 at 12 only", latest.Seqs)
	}
	// Unread counts: ann's messages are unread for user 2, not for ann.
	for _, tc := range []struct {
		user int64
		want []busapi.UnreadCount
	}{
		{2, []busapi.UnreadCount{{ChatID: 3, LastSeq: 12, Unread: 7}, {ChatID: 4}}},
		{1, []busapi.UnreadCount{{ChatID: 3, LastSeq: 12}, {ChatID: 4}}},
	} {
		var unread busapi.Unread
		req := busapi.UnreadRequest{UserID: tc.user, Chats: []busapi.ReadMark{{ChatID: 3, Seq: 5}, {ChatID: 4}}}
		if err := client.Request(context.Background(), subj.HistoryUnread(), req, &unread); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, unread.Chats); diff != "" {
			t.Errorf("unread of user %d (-want +got):\n%s", tc.user, diff)
		}
	}
	var unread busapi.Unread
	err = client.Request(context.Background(), subj.HistoryUnread(), busapi.UnreadRequest{UserID: 2, Chats: []busapi.ReadMark{{ChatID: 3, Seq: -1}}}, &unread)
	if code := busapi.CodeOf(err); code != protocol.CodeInvalidInput {
		t.Errorf("unread at a negative position: %v, want invalid_input", err)
	}
	// Single entries, for the chat service.
	entry := func(req busapi.MessageRequest) (protocol.Message, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var m protocol.Message
		err := client.Request(ctx, subj.HistoryMessage(), req, &m)
		return m, err
	}
	if m, err := entry(busapi.MessageRequest{ChatID: 3, Seq: 5}); err != nil || m.Text != "m5" || m.Type != protocol.TypeMessage {
		t.Errorf("entry 5 = %+v, %v; want m5", m, err)
	}
	if m, err := entry(busapi.MessageRequest{ChatID: 3, SenderID: 1, ClientMsgID: "6"}); err != nil || m.Seq != 7 {
		t.Errorf("entry of client id 6 = %+v, %v; want seq 7", m, err)
	}
	for _, tc := range []struct {
		req  busapi.MessageRequest
		code protocol.Code
	}{
		{busapi.MessageRequest{ChatID: 3, Seq: 99}, protocol.CodeMessageNotFound},
		{busapi.MessageRequest{ChatID: 3, SenderID: 2, ClientMsgID: "6"}, protocol.CodeMessageNotFound},
		{busapi.MessageRequest{ChatID: 3}, protocol.CodeInvalidInput},
	} {
		if _, err := entry(tc.req); busapi.CodeOf(err) != tc.code {
			t.Errorf("entry %+v: %v, want code %s", tc.req, err, tc.code)
		}
	}
	p, err = page(busapi.HistoryRequest{UserID: 1, ChatID: 3, AfterSeq: 9, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Messages) != 2 || p.Messages[0].Seq != 10 || p.Messages[1].Seq != 11 {
		t.Errorf("page after 9 = %+v, want seqs 10, 11", p.Messages)
	}
	for _, tc := range []struct {
		name string
		req  busapi.HistoryRequest
		code protocol.Code
	}{
		{"limit 101", busapi.HistoryRequest{UserID: 1, ChatID: 3, Limit: 101}, protocol.CodeInvalidInput},
		{"before and after", busapi.HistoryRequest{UserID: 1, ChatID: 3, BeforeSeq: 5, AfterSeq: 2, Limit: 10}, protocol.CodeInvalidInput},
		{"not a member", busapi.HistoryRequest{UserID: 2, ChatID: 3, Limit: 10}, protocol.CodeNotAMember},
		{"unknown chat", busapi.HistoryRequest{UserID: 1, ChatID: 99, Limit: 10}, protocol.CodeChatNotFound},
	} {
		_, err := page(tc.req)
		if code := busapi.CodeOf(err); code != tc.code {
			t.Errorf("%s: err = %v, want code %s", tc.name, err, tc.code)
		}
	}
	// The writer's position reached the stream's end, and what it stored
	// was purged from the stream.
	pool, err := pgxpool.New(context.Background(), cfg.PostgresURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	testenv.Eventually(t, 20*time.Second, func() bool {
		ok, err := streamtest.Drained(context.Background(), js, subj, msgstore.New(pool))
		return err == nil && ok
	}, "the writer's position is not at the stream's end")
	testenv.Eventually(t, 20*time.Second, func() bool {
		st, err := js.Stream(context.Background(), subj.MessagesStream())
		return err == nil && st.CachedInfo().State.Msgs == 0 && st.CachedInfo().State.FirstSeq == 13
	}, "the stored messages were not purged from the stream")

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

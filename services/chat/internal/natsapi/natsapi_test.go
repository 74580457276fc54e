package natsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/chat/internal/chats"
	"github.com/communications/communications/services/chat/internal/chatstore"
	"github.com/communications/communications/services/chat/internal/historydir"
	"github.com/communications/communications/services/chat/internal/historydir/historydirtest"
	"github.com/communications/communications/services/chat/internal/msgstream"
	"github.com/communications/communications/services/chat/internal/unread"
	"github.com/communications/communications/services/chat/internal/userdir"
	"github.com/communications/communications/services/chat/internal/userdir/userdirtest"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestMapError(t *testing.T) {
	t.Parallel()
	cause := errors.New("connection refused")
	refusal := func(kind error, msg string) error {
		return fmt.Errorf("update chat: %w", &chats.RequestError{Err: kind, Msg: msg})
	}
	tests := []struct {
		name      string
		err       error
		want      protocol.Code
		wantMsg   string
		wantCause bool // kept, to be logged
	}{
		{name: "chat not found", err: fmt.Errorf("get chat: %w", chats.ErrChatNotFound), want: protocol.CodeChatNotFound, wantMsg: "no such chat"},
		{name: "not a member", err: chats.ErrNotAMember, want: protocol.CodeNotAMember, wantMsg: "not a member"},
		{name: "invalid message", err: fmt.Errorf("%w: text is empty", chats.ErrInvalidMessage), want: protocol.CodeInvalidMessage, wantMsg: "text is empty"},
		{name: "not creator", err: refusal(chats.ErrNotCreator, `nobody can edit "general"`), want: protocol.CodeNotCreator, wantMsg: `nobody can edit "general"`},
		{name: "name taken", err: fmt.Errorf("create chat: insert chat: %w", chats.ErrNameTaken), want: protocol.CodeNameTaken, wantMsg: "letter case"},
		{name: "unknown user", err: refusal(chats.ErrUnknownUser, `unknown user "zed"`), want: protocol.CodeUnknownUser, wantMsg: `unknown user "zed"`},
		{name: "duplicate member", err: refusal(chats.ErrDuplicateMember, `"bob" is listed twice`), want: protocol.CodeDuplicateMember, wantMsg: `"bob" is listed twice`},
		{name: "invalid input", err: refusal(chats.ErrInvalidInput, "the name is empty"), want: protocol.CodeInvalidInput, wantMsg: "the name is empty"},
		{name: "chat too big", err: refusal(chats.ErrInvalidInput, "a chat has at most 1000 members"), want: protocol.CodeInvalidInput, wantMsg: "a chat has at most 1000 members"},
		{name: "message not found", err: refusal(chats.ErrMessageNotFound, "no message with sequence 9 in this chat"), want: protocol.CodeMessageNotFound, wantMsg: "sequence 9"},
		{name: "not sender", err: refusal(chats.ErrNotSender, "only its sender can edit a message"), want: protocol.CodeNotSender, wantMsg: "only its sender"},
		{name: "message deleted", err: refusal(chats.ErrMessageDeleted, "message 4 is deleted"), want: protocol.CodeMessageDeleted, wantMsg: "message 4 is deleted"},
		{name: "history unavailable", err: fmt.Errorf("change message: history entry: %w", natsbus.ErrUnavailable), want: protocol.CodeUnavailable, wantMsg: "retry", wantCause: true},
		{name: "other", err: fmt.Errorf("create chat: %w", cause), want: protocol.CodeUnavailable, wantMsg: "retry", wantCause: true},
		{name: "auth unavailable", err: fmt.Errorf("look up: %w", natsbus.ErrUnavailable), want: protocol.CodeUnavailable, wantMsg: "retry", wantCause: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := mapError(tc.err)
			be, ok := errors.AsType[*busapi.Error](got)
			if !ok || be.Code != tc.want {
				t.Fatalf("mapError(%v) = %v, want code %s", tc.err, got, tc.want)
			}
			if plain := error(be) == got; plain == tc.wantCause {
				t.Errorf("cause kept = %v, want %v", !plain, tc.wantCause)
			}
			if !strings.Contains(be.Message, tc.wantMsg) || strings.Contains(be.Message, cause.Error()) {
				t.Errorf("message %q: want it to contain %q and no internal detail", be.Message, tc.wantMsg)
			}
		})
	}
}

var (
	alice = busapi.User{ID: 1, Username: "alice"}
	bob   = busapi.User{ID: 2, Username: "Bob"}
	carol = busapi.User{ID: 3, Username: "carol"}
	dave  = busapi.User{ID: 4, Username: "dave"}
)

func member(u busapi.User) protocol.Member { return protocol.Member{ID: u.ID, Username: u.Username} }

type harness struct {
	url     string // of the NATS server
	subj    subjects.Subjects
	client  *natsbus.Client
	events  *nats.Subscription
	tp      trace.TracerProvider
	js      jetstream.JetStream
	history *historydirtest.History // the history service's stored entries
}

// connector returns a function that connects to the NATS server at url
// under a client name, closing the connection when the test ends.
func connector(t *testing.T, url string) func(name string) *nats.Conn {
	return func(name string) *nats.Conn {
		t.Helper()
		nc, err := nats.Connect(url, nats.Name(name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
}

// migratedPool opens a pool on a fresh test database with the chat
// service's tables.
func migratedPool(t *testing.T, log *slog.Logger) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool, err := pgdb.Open(ctx, testenv.Postgres(t), 4, sdktrace.NewTracerProvider())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := pgdb.Migrate(ctx, pool, chatstore.Migrations(), chatstore.MigrationTable, log); err != nil {
		t.Fatal(err)
	}
	return pool
}

// start runs the chat service's handlers on a fresh database and an
// embedded NATS server, with the auth service's users lookup answered by a
// test double unless noAuth.
func start(t *testing.T, noAuth bool) *harness {
	t.Helper()
	ctx := context.Background()
	ns := testenv.NATS(t)
	connect := connector(t, ns.ClientURL())
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	log := telemetry.NewLogger(io.Discard, 0)
	pool := migratedPool(t, log)

	tp := sdktrace.NewTracerProvider()
	service := connect("chat")
	stream, err := msgstream.Ensure(ctx, service, subj, msgstream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	users := userdir.New(natsbus.NewClient(service, tp), subj)
	store, events := chatstore.New(pool), NewEvents(service, subj)
	svc := chats.NewService(store, stream, historydir.New(natsbus.NewClient(service, tp), subj), users, events, log, chats.Config{})
	reads := chats.NewReads(svc, store, unread.New(natsbus.NewClient(service, tp), subj), events, log)
	srv := natsbus.NewServer(service, tp, log, 5*time.Second)
	if _, err := Register(ctx, srv, subj, svc, reads); err != nil {
		t.Fatal(err)
	}
	if err := service.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })

	if !noAuth {
		userdirtest.Serve(t, connect("auth"), subj, alice, bob, carol, dave)
	}
	history := historydirtest.Serve(t, connect("history"), subj)
	js, err := jetstream.New(connect("stream reader"))
	if err != nil {
		t.Fatal(err)
	}
	gateway := connect("gateway")
	chatEvents, err := gateway.SubscribeSync(subj.ChatEvents())
	if err != nil {
		t.Fatal(err)
	}
	if err := gateway.Flush(); err != nil {
		t.Fatal(err)
	}
	return &harness{url: ns.ClientURL(), subj: subj, client: natsbus.NewClient(gateway, tp), events: chatEvents, tp: tp, js: js, history: history}
}

// call sends a request and returns the reply's error code ("" for none).
func (h *harness) call(t *testing.T, ctx context.Context, subject string, req, resp any) (protocol.Code, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := h.client.Request(ctx, subject, req, resp)
	if err == nil {
		return "", ""
	}
	be, ok := errors.AsType[*busapi.Error](err)
	if !ok {
		t.Fatalf("request %s: %v", subject, err)
	}
	return be.Code, be.Message
}

// nextEvent returns the next chat event and the trace it was published in.
func (h *harness) nextEvent(t *testing.T) (busapi.ChatEvent, trace.TraceID) {
	t.Helper()
	msg, err := h.events.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no chat event: %v", err)
	}
	var ev busapi.ChatEvent
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		t.Fatalf("chat event %q: %v", msg.Data, err)
	}
	return ev, trace.SpanContextFromContext(natsbus.Extract(context.Background(), msg)).TraceID()
}

var ignoreCreated = cmpopts.IgnoreFields(protocol.Chat{}, "CreatedAt")

// TestChats drives every request subject over NATS as the gateway does:
// each refusal with its code, and each change announced on ChatEvents.
func TestChats(t *testing.T) {
	t.Parallel()
	h := start(t, false)
	ctx := context.Background()

	// alice creates "team" with bob, in a trace of the test's own.
	tctx, span := h.tp.Tracer("natsapi_test").Start(ctx, "create")
	var team busapi.Chat
	code, msg := h.call(t, tctx, h.subj.ChatCreate(), busapi.CreateChatRequest{
		CreatorID: alice.ID, CreatorName: alice.Username, Name: "  team ", Description: "ours", Members: []string{"BOB", "alice"},
	}, &team)
	span.End()
	if code != "" {
		t.Fatalf("create: %s %s", code, msg)
	}
	wantTeam := busapi.Chat{ID: team.ID, Name: "team", Description: "ours", CreatorID: alice.ID,
		Members: []protocol.Member{member(alice), member(bob)}}
	if diff := cmp.Diff(wantTeam, team, ignoreCreated); diff != "" {
		t.Errorf("created (-want +got):\n%s", diff)
	}
	if team.CreatedAt.IsZero() {
		t.Error("created chat has no created_at")
	}
	ev, traceID := h.nextEvent(t)
	if diff := cmp.Diff(busapi.ChatEvent{Kind: "created", Chat: team, Added: []int64{alice.ID, bob.ID}}, ev); diff != "" {
		t.Errorf("created event (-want +got):\n%s", diff)
	}
	if want := span.SpanContext().TraceID(); traceID != want {
		t.Errorf("event in trace %s, want the request's %s", traceID, want)
	}

	upd := func(actor busapi.User, chatID int64, f func(*busapi.UpdateChatRequest)) busapi.UpdateChatRequest {
		r := busapi.UpdateChatRequest{ActorID: actor.ID, ActorName: actor.Username, ChatID: chatID}
		f(&r)
		return r
	}
	name := func(s string) func(*busapi.UpdateChatRequest) {
		return func(r *busapi.UpdateChatRequest) { r.Name = &s }
	}
	create := func(f func(*busapi.CreateChatRequest)) busapi.CreateChatRequest {
		r := busapi.CreateChatRequest{CreatorID: carol.ID, CreatorName: carol.Username, Name: "carols"}
		f(&r)
		return r
	}
	refusals := []struct {
		name    string
		subject string
		req     any
		want    protocol.Code
		wantMsg string
	}{
		{"name taken in another case", h.subj.ChatCreate(), create(func(r *busapi.CreateChatRequest) { r.Name = "TEAM" }), protocol.CodeNameTaken, ""},
		{"empty name", h.subj.ChatCreate(), create(func(r *busapi.CreateChatRequest) { r.Name = " " }), protocol.CodeInvalidInput, "empty"},
		{"name too long", h.subj.ChatCreate(), create(func(r *busapi.CreateChatRequest) { r.Name = strings.Repeat("n", 65) }), protocol.CodeInvalidInput, "64"},
		{"description too long", h.subj.ChatCreate(), create(func(r *busapi.CreateChatRequest) { r.Description = strings.Repeat("d", 501) }),
			protocol.CodeInvalidInput, "500"},
		{"too many members", h.subj.ChatCreate(), create(func(r *busapi.CreateChatRequest) { r.Members = make([]string, 101) }),
			protocol.CodeInvalidInput, "100"},
		{"unknown user", h.subj.ChatCreate(), create(func(r *busapi.CreateChatRequest) { r.Members = []string{"bob", "nobody"} }),
			protocol.CodeUnknownUser, `unknown user "nobody"`},
		{"duplicate member", h.subj.ChatCreate(), create(func(r *busapi.CreateChatRequest) { r.Members = []string{"bob", "BOB"} }),
			protocol.CodeDuplicateMember, `"bob" and "BOB"`},
		{"malformed request", h.subj.ChatCreate(), json.RawMessage(`{"name":1}`), protocol.CodeBadRequest, ""},
		{"member edits", h.subj.ChatUpdate(), upd(bob, team.ID, name("bobs")), protocol.CodeNotCreator, "creator"},
		{"non-member edits", h.subj.ChatUpdate(), upd(carol, team.ID, name("carols")), protocol.CodeNotAMember, ""},
		{"nobody edits general", h.subj.ChatUpdate(), upd(alice, chats.GeneralChatID, name("mine")), protocol.CodeNotCreator, "general"},
		{"edit unknown chat", h.subj.ChatUpdate(), upd(alice, 9999, name("x")), protocol.CodeChatNotFound, ""},
		{"rename to a taken name", h.subj.ChatUpdate(), upd(alice, team.ID, name("General")), protocol.CodeNameTaken, ""},
		{"remove the creator", h.subj.ChatUpdate(), upd(alice, team.ID, func(r *busapi.UpdateChatRequest) { r.RemoveMembers = []string{"alice"} }),
			protocol.CodeInvalidInput, "creator"},
		{"remove a non-member", h.subj.ChatUpdate(), upd(alice, team.ID, func(r *busapi.UpdateChatRequest) { r.RemoveMembers = []string{"dave"} }),
			protocol.CodeInvalidInput, `"dave" is not a member`},
		{"add an unknown user", h.subj.ChatUpdate(), upd(alice, team.ID, func(r *busapi.UpdateChatRequest) { r.AddMembers = []string{"zed"} }),
			protocol.CodeUnknownUser, `"zed"`},
		{"add and remove one user", h.subj.ChatUpdate(), upd(alice, team.ID, func(r *busapi.UpdateChatRequest) {
			r.AddMembers, r.RemoveMembers = []string{"dave"}, []string{"Dave"}
		}), protocol.CodeDuplicateMember, ""},
		{"non-member reads", h.subj.ChatGet(), busapi.ChatRequest{UserID: carol.ID, ChatID: team.ID}, protocol.CodeNotAMember, ""},
		{"read unknown chat", h.subj.ChatGet(), busapi.ChatRequest{UserID: alice.ID, ChatID: 9999}, protocol.CodeChatNotFound, ""},
		{"non-member's history", h.subj.ChatAccess(), busapi.ChatRequest{UserID: carol.ID, ChatID: team.ID}, protocol.CodeNotAMember, ""},
		{"history of unknown chat", h.subj.ChatAccess(), busapi.ChatRequest{UserID: alice.ID, ChatID: 9999}, protocol.CodeChatNotFound, ""},
		{"non-member sends", h.subj.ChatSend(), busapi.SendRequest{ChatID: team.ID, SenderID: carol.ID, Sender: "carol", ClientMsgID: "c-1", Text: "hi"},
			protocol.CodeNotAMember, ""},
		{"empty message", h.subj.ChatSend(), busapi.SendRequest{ChatID: team.ID, SenderID: bob.ID, Sender: "Bob", ClientMsgID: "b-1", Text: " "},
			protocol.CodeInvalidMessage, "empty"},
		// PostgreSQL's text cannot hold NUL: the chat's row could not be
		// written, nor the message by the history writer.
		{"NUL in a message", h.subj.ChatSend(), busapi.SendRequest{ChatID: team.ID, SenderID: bob.ID, Sender: "Bob", ClientMsgID: "b-2", Text: "a\x00b"},
			protocol.CodeInvalidMessage, "NUL"},
		{"NUL in a description", h.subj.ChatCreate(), create(func(r *busapi.CreateChatRequest) { r.Description = "a\x00b" }),
			protocol.CodeInvalidInput, "NUL"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := h.call(t, ctx, tc.subject, tc.req, nil)
			if code != tc.want || !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("got %s %q, want %s with %q", code, msg, tc.want, tc.wantMsg)
			}
		})
	}

	// Rename: an "updated" event, and none for any refusal above.
	var renamed busapi.Chat
	if code, msg := h.call(t, ctx, h.subj.ChatUpdate(), upd(alice, team.ID, name("Dream Team")), &renamed); code != "" {
		t.Fatalf("rename: %s %s", code, msg)
	}
	wantTeam.Name = "Dream Team"
	if diff := cmp.Diff(wantTeam, renamed, ignoreCreated); diff != "" {
		t.Errorf("renamed (-want +got):\n%s", diff)
	}
	ev, _ = h.nextEvent(t)
	if diff := cmp.Diff(busapi.ChatEvent{Kind: "updated", Chat: renamed}, ev); diff != "" {
		t.Errorf("rename event (-want +got):\n%s", diff)
	}

	// Members: add carol, remove bob; an existing member added is a no-op.
	var swapped busapi.Chat
	if code, msg := h.call(t, ctx, h.subj.ChatUpdate(), upd(alice, team.ID, func(r *busapi.UpdateChatRequest) {
		r.AddMembers, r.RemoveMembers = []string{"Carol", "alice"}, []string{"bob"}
	}), &swapped); code != "" {
		t.Fatalf("swap members: %s %s", code, msg)
	}
	wantTeam.Members = []protocol.Member{member(alice), member(carol)}
	if diff := cmp.Diff(wantTeam, swapped, ignoreCreated); diff != "" {
		t.Errorf("after swap (-want +got):\n%s", diff)
	}
	ev, _ = h.nextEvent(t)
	if diff := cmp.Diff(busapi.ChatEvent{Kind: "members", Chat: swapped, Added: []int64{carol.ID}, Removed: []int64{bob.ID}}, ev); diff != "" {
		t.Errorf("members event (-want +got):\n%s", diff)
	}

	// The send path sees the change at once.
	sends := []struct {
		user busapi.User
		want protocol.Code
	}{{carol, ""}, {bob, protocol.CodeNotAMember}}
	for _, s := range sends {
		var res busapi.SendResult
		code, _ := h.call(t, ctx, h.subj.ChatSend(), busapi.SendRequest{ChatID: team.ID, SenderID: s.user.ID, Sender: s.user.Username, ClientMsgID: "after", Text: "hi"}, &res)
		if code != s.want {
			t.Errorf("%s sends after the edit: %q, want %q", s.user.Username, code, s.want)
		}
	}

	// Reads.
	var got busapi.Chat
	if code, _ := h.call(t, ctx, h.subj.ChatGet(), busapi.ChatRequest{UserID: carol.ID, ChatID: team.ID}, &got); code != "" || !cmp.Equal(swapped, got) {
		t.Errorf("carol gets %+v (%s), want %+v", got, code, swapped)
	}
	var general busapi.Chat
	if code, _ := h.call(t, ctx, h.subj.ChatGet(), busapi.ChatRequest{UserID: dave.ID, ChatID: chats.GeneralChatID}, &general); code != "" ||
		!general.Everyone || general.Members != nil || general.CreatorID != 0 {
		t.Errorf("general = %+v (%s), want everyone, no members, no creator", general, code)
	}
	if code, _ := h.call(t, ctx, h.subj.ChatAccess(), busapi.ChatRequest{UserID: carol.ID, ChatID: team.ID}, nil); code != "" {
		t.Errorf("carol's access: %s", code)
	}
	var apples busapi.Chat
	if code, msg := h.call(t, ctx, h.subj.ChatCreate(), busapi.CreateChatRequest{CreatorID: carol.ID, CreatorName: "carol", Name: "apples"}, &apples); code != "" {
		t.Fatalf("create apples: %s %s", code, msg)
	}
	if ev, _ := h.nextEvent(t); ev.Kind != "created" || ev.Chat.ID != apples.ID || !cmp.Equal(ev.Added, []int64{carol.ID}) {
		t.Errorf("apples event = %+v", ev)
	}
	var list busapi.ChatList
	if code, _ := h.call(t, ctx, h.subj.ChatList(), busapi.UserChatsRequest{UserID: carol.ID}, &list); code != "" {
		t.Fatalf("list: %s", code)
	}
	if diff := cmp.Diff([]busapi.Chat{general, apples, swapped}, list.Chats); diff != "" {
		t.Errorf("carol's chats (-want +got):\n%s", diff)
	}
	var ids busapi.UserChats
	if code, _ := h.call(t, ctx, h.subj.ChatUserChats(), busapi.UserChatsRequest{UserID: bob.ID}, &ids); code != "" || !cmp.Equal(ids.ChatIDs, []int64{1}) {
		t.Errorf("bob's chat ids = %v (%s), want [1]", ids.ChatIDs, code)
	}
}

// TestAuthUnavailable: with no auth service answering, a create naming
// members is answered unavailable (retryable) and nothing is created.
func TestAuthUnavailable(t *testing.T) {
	t.Parallel()
	h := start(t, true)
	ctx := context.Background()
	code, _ := h.call(t, ctx, h.subj.ChatCreate(), busapi.CreateChatRequest{CreatorID: alice.ID, CreatorName: "alice", Name: "team", Members: []string{"bob"}}, nil)
	if code != protocol.CodeUnavailable {
		t.Errorf("create with auth down: %q, want unavailable", code)
	}
	// A chat without members needs no lookup; the name is still free.
	var c busapi.Chat
	if code, msg := h.call(t, ctx, h.subj.ChatCreate(), busapi.CreateChatRequest{CreatorID: alice.ID, CreatorName: "alice", Name: "team"}, &c); code != "" {
		t.Fatalf("create without members: %s %s", code, msg)
	}
	if ev, _ := h.nextEvent(t); ev.Chat.ID != c.ID {
		t.Errorf("first event is for chat %d, want %d (and none for the failed create)", ev.Chat.ID, c.ID)
	}
}

// lastStreamed returns the newest message in the stream of chat.
func (h *harness) lastStreamed(t *testing.T, chatID int64) busapi.StreamMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := h.js.Stream(ctx, h.subj.MessagesStream())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.GetLastMsgForSubject(ctx, h.subj.Message(chatID))
	if err != nil {
		t.Fatalf("last message of chat %d: %v", chatID, err)
	}
	var m busapi.StreamMessage
	if err := json.Unmarshal(raw.Data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestChangeMessages drives chat.change over NATS: every refusal with its
// code (the target asked of a stand-in history service), an accepted edit
// and delete in the stream with their kind and target, and retries answered
// with the original sequence number, for sends too.
func TestChangeMessages(t *testing.T) {
	t.Parallel()
	h := start(t, false)
	ctx := context.Background()
	var team busapi.Chat
	if code, msg := h.call(t, ctx, h.subj.ChatCreate(), busapi.CreateChatRequest{
		CreatorID: alice.ID, CreatorName: alice.Username, Name: "team", Members: []string{"bob"},
	}, &team); code != "" {
		t.Fatalf("create: %s %s", code, msg)
	}
	entry := func(seq int64, kind string, sender busapi.User, client string, deleted bool) protocol.Message {
		return protocol.Message{ChatID: team.ID, Seq: seq, Kind: kind, SenderID: sender.ID, Sender: sender.Username, ClientMsgID: client, Deleted: deleted}
	}
	h.history.Add(
		entry(1, protocol.KindMessage, alice, "a-1", false),
		entry(2, protocol.KindMessage, bob, "b-1", false),
		entry(3, protocol.KindEdit, alice, "a-e1", false),
		entry(4, protocol.KindMessage, alice, "a-2", true),
		entry(5, protocol.KindDelete, alice, "a-d1", false),
	)
	chg := func(user busapi.User, kind string, target int64, client, text string) busapi.ChangeRequest {
		return busapi.ChangeRequest{ChatID: team.ID, SenderID: user.ID, Sender: user.Username, Kind: kind, TargetSeq: target, ClientMsgID: client, Text: text}
	}
	edit := func(user busapi.User, target int64, client string) busapi.ChangeRequest {
		return chg(user, protocol.KindEdit, target, client, "new text")
	}
	refusals := []struct {
		name    string
		req     busapi.ChangeRequest
		want    protocol.Code
		wantMsg string
	}{
		{"another's message", edit(bob, 1, "x-1"), protocol.CodeNotSender, "sender"},
		{"delete another's message", chg(alice, protocol.KindDelete, 2, "x-2", ""), protocol.CodeNotSender, "sender"},
		{"no such sequence", edit(alice, 99, "x-3"), protocol.CodeMessageNotFound, "99"},
		{"an edit is no message", edit(alice, 3, "x-4"), protocol.CodeMessageNotFound, "not a message"},
		{"deleted message", edit(alice, 4, "x-5"), protocol.CodeMessageDeleted, "deleted"},
		{"delete a deleted message", chg(alice, protocol.KindDelete, 4, "x-6", ""), protocol.CodeMessageDeleted, "deleted"},
		{"non-member", edit(carol, 1, "x-7"), protocol.CodeNotAMember, ""},
		{"unknown chat", busapi.ChangeRequest{ChatID: 9999, SenderID: alice.ID, Sender: "alice", Kind: protocol.KindEdit, TargetSeq: 1, ClientMsgID: "x-8", Text: "x"},
			protocol.CodeChatNotFound, ""},
		{"empty text", chg(alice, protocol.KindEdit, 1, "x-9", " "), protocol.CodeInvalidMessage, "empty"},
		{"text too long", chg(alice, protocol.KindEdit, 1, "x-10", strings.Repeat("é", protocol.MaxTextRunes+1)), protocol.CodeInvalidMessage, "longer"},
		{"NUL in the text", chg(alice, protocol.KindEdit, 1, "x-14", "a\x00b"), protocol.CodeInvalidMessage, "NUL"},
		{"delete with text", chg(alice, protocol.KindDelete, 1, "x-11", "why"), protocol.CodeInvalidMessage, "no text"},
		{"no target", edit(alice, 0, "x-12"), protocol.CodeInvalidMessage, "seq"},
		{"unknown kind", chg(alice, "shout", 1, "x-13", "x"), protocol.CodeInvalidMessage, "edit or a delete"},
		{"bad client id", edit(alice, 1, "has space"), protocol.CodeInvalidMessage, "client_msg_id"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := h.call(t, ctx, h.subj.ChatChange(), tc.req, nil)
			if code != tc.want || !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("got %s %q, want %s with %q", code, msg, tc.want, tc.wantMsg)
			}
		})
	}
	if code, _ := h.call(t, ctx, h.subj.ChatSend(), busapi.SendRequest{ChatID: team.ID, SenderID: alice.ID, Sender: "alice", ClientMsgID: "s-0", Text: "x"}, nil); code != "" {
		t.Fatalf("send: %s", code)
	}
	if m := h.lastStreamed(t, team.ID); m.ClientMsgID != "s-0" {
		t.Errorf("the refusals reached the stream: last is %+v", m)
	}

	// Accepted: an edit and a delete, in the stream with kind and target.
	var res busapi.SendResult
	if code, msg := h.call(t, ctx, h.subj.ChatChange(), edit(alice, 1, "e-1"), &res); code != "" || res.Duplicate {
		t.Fatalf("edit: %s %s %+v", code, msg, res)
	}
	if m := h.lastStreamed(t, team.ID); m.Kind != protocol.KindEdit || m.TargetSeq != 1 || m.Text != "new text" || m.ClientMsgID != "e-1" || m.SenderID != alice.ID {
		t.Errorf("streamed edit = %+v", m)
	}
	if code, msg := h.call(t, ctx, h.subj.ChatChange(), chg(bob, protocol.KindDelete, 2, "d-1", ""), &res); code != "" || res.Duplicate {
		t.Fatalf("delete: %s %s %+v", code, msg, res)
	}
	if m := h.lastStreamed(t, team.ID); m.Kind != protocol.KindDelete || m.TargetSeq != 2 || m.Text != "" || m.SenderID != bob.ID {
		t.Errorf("streamed delete = %+v", m)
	}

	// Retries the stream recognises: without a sequence until history
	// has the original, then with it.
	res = busapi.SendResult{}
	if code, _ := h.call(t, ctx, h.subj.ChatChange(), edit(alice, 1, "e-1"), &res); code != "" || !res.Duplicate || res.Seq != 0 {
		t.Errorf("retried edit not stored yet: %s %+v, want duplicate without seq", code, res)
	}
	h.history.Add(entry(6, protocol.KindEdit, alice, "e-1", false))
	if code, _ := h.call(t, ctx, h.subj.ChatChange(), edit(alice, 1, "e-1"), &res); code != "" || !res.Duplicate || res.Seq != 6 {
		t.Errorf("retried edit: %s %+v, want duplicate with seq 6", code, res)
	}
	send := busapi.SendRequest{ChatID: team.ID, SenderID: bob.ID, Sender: "Bob", ClientMsgID: "s-1", Text: "hi"}
	for _, want := range []busapi.SendResult{{}, {Duplicate: true}} {
		res = busapi.SendResult{}
		if code, _ := h.call(t, ctx, h.subj.ChatSend(), send, &res); code != "" || res != want {
			t.Errorf("send s-1: %s %+v, want %+v", code, res, want)
		}
	}
	h.history.Add(entry(7, protocol.KindMessage, bob, "s-1", false))
	res = busapi.SendResult{}
	if code, _ := h.call(t, ctx, h.subj.ChatSend(), send, &res); code != "" || res != (busapi.SendResult{Duplicate: true, Seq: 7}) {
		t.Errorf("retried send: %s %+v, want duplicate with seq 7", code, res)
	}
	// A retried delete finds its target deleted (by itself): it is
	// answered with the original, not refused.
	if code, msg := h.call(t, ctx, h.subj.ChatChange(), chg(alice, protocol.KindDelete, 4, "a-d1", ""), &res); code != "" || !res.Duplicate || res.Seq != 5 {
		t.Errorf("retried delete: %s %s %+v, want duplicate with seq 5", code, msg, res)
	}
}

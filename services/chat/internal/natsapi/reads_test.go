package natsapi

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/services/chat/internal/chats"
)

// serveUnread plays the history service's unread counts: chat c has
// last[c] entries, all messages of others. It returns a function that
// stops answering.
func (h *harness) serveUnread(t *testing.T, last map[int64]int64) (stop func()) {
	t.Helper()
	nc, err := nats.Connect(h.url, nats.Name("history"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	srv := natsbus.NewServer(nc, noop.NewTracerProvider(), telemetry.NewLogger(io.Discard, 0), time.Second)
	sub, err := natsbus.Handle(context.Background(), srv, h.subj.HistoryUnread(), subjects.QueueHistory,
		func(_ context.Context, req busapi.UnreadRequest) (busapi.Unread, error) {
			out := busapi.Unread{Chats: make([]busapi.UnreadCount, len(req.Chats))}
			for i, m := range req.Chats {
				out.Chats[i] = busapi.UnreadCount{ChatID: m.ChatID, LastSeq: last[m.ChatID], Unread: int(max(0, last[m.ChatID]-m.Seq))}
			}
			return out, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return func() {
		_ = sub.Unsubscribe()
		_ = nc.Flush()
	}
}

// TestDirectAndReads drives chat.direct, chat.read and chat.list with
// counts over NATS as the gateway does.
func TestDirectAndReads(t *testing.T) {
	t.Parallel()
	h := start(t, false)
	ctx := context.Background()
	gateway, err := nats.Connect(h.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gateway.Close)
	readEvents, err := gateway.SubscribeSync(h.subj.ChatEventsRead())
	if err != nil {
		t.Fatal(err)
	}
	if err := gateway.Flush(); err != nil {
		t.Fatal(err)
	}

	// Direct chats: created once, announced once, the same from both sides.
	var dm busapi.DirectChat
	if code, msg := h.call(t, ctx, h.subj.ChatDirect(), busapi.DirectRequest{UserID: alice.ID, Username: alice.Username, Other: "BOB"}, &dm); code != "" {
		t.Fatalf("start direct: %s %s", code, msg)
	}
	want := busapi.Chat{ID: dm.Chat.ID, Direct: true, Members: []protocol.Member{member(alice), member(bob)}}
	if diff := cmp.Diff(want, dm.Chat, ignoreCreated); diff != "" || !dm.Created {
		t.Errorf("direct chat (created %v) (-want +got):\n%s", dm.Created, diff)
	}
	ev, _ := h.nextEvent(t)
	if diff := cmp.Diff(busapi.ChatEvent{Kind: "created", Chat: dm.Chat, Added: []int64{alice.ID, bob.ID}}, ev); diff != "" {
		t.Errorf("created event (-want +got):\n%s", diff)
	}
	var again busapi.DirectChat
	if code, msg := h.call(t, ctx, h.subj.ChatDirect(), busapi.DirectRequest{UserID: bob.ID, Username: bob.Username, Other: "alice"}, &again); code != "" {
		t.Fatalf("start direct again: %s %s", code, msg)
	}
	if again.Created || !cmp.Equal(again.Chat, dm.Chat) {
		t.Errorf("started again: %+v, want the same chat, not created", again)
	}

	var team busapi.Chat
	if code, msg := h.call(t, ctx, h.subj.ChatCreate(), busapi.CreateChatRequest{CreatorID: alice.ID, CreatorName: "alice", Name: "team", Members: []string{"bob"}}, &team); code != "" {
		t.Fatalf("create team: %s %s", code, msg)
	}
	stop := h.serveUnread(t, map[int64]int64{chats.GeneralChatID: 3, team.ID: 10})

	refusals := []struct {
		name    string
		subject string
		req     any
		want    protocol.Code
		wantMsg string
	}{
		{"direct with oneself", h.subj.ChatDirect(), busapi.DirectRequest{UserID: alice.ID, Username: "alice", Other: "Alice"}, protocol.CodeInvalidInput, "yourself"},
		{"direct with nobody", h.subj.ChatDirect(), busapi.DirectRequest{UserID: alice.ID, Username: "alice", Other: "nobody"}, protocol.CodeUnknownUser, `"nobody"`},
		{"edit a direct chat", h.subj.ChatUpdate(), busapi.UpdateChatRequest{ActorID: alice.ID, ActorName: "alice", ChatID: dm.Chat.ID, Name: new("ours")},
			protocol.CodeNotCreator, "direct"},
		{"read beyond the newest", h.subj.ChatRead(), busapi.ReadRequest{UserID: bob.ID, ChatID: team.ID, Seq: 11}, protocol.CodeInvalidInput, "beyond"},
		{"read at 0", h.subj.ChatRead(), busapi.ReadRequest{UserID: bob.ID, ChatID: team.ID}, protocol.CodeInvalidInput, "positive"},
		{"read by a non-member", h.subj.ChatRead(), busapi.ReadRequest{UserID: carol.ID, ChatID: team.ID, Seq: 1}, protocol.CodeNotAMember, ""},
		{"read an unknown chat", h.subj.ChatRead(), busapi.ReadRequest{UserID: bob.ID, ChatID: 999, Seq: 1}, protocol.CodeChatNotFound, ""},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := h.call(t, ctx, tc.subject, tc.req, nil)
			if code != tc.want || !contains(msg, tc.wantMsg) {
				t.Errorf("got %s %q, want %s with %q", code, msg, tc.want, tc.wantMsg)
			}
		})
	}

	// bob reads team up to 7: announced with the unread count after it.
	var res busapi.ReadResult
	if code, msg := h.call(t, ctx, h.subj.ChatRead(), busapi.ReadRequest{UserID: bob.ID, ChatID: team.ID, Seq: 7}, &res); code != "" {
		t.Fatalf("read: %s %s", code, msg)
	}
	if want := (busapi.ReadResult{ChatID: team.ID, Seq: 7, Unread: 3, Moved: true}); res != want {
		t.Errorf("read result %+v, want %+v", res, want)
	}
	msg, err := readEvents.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no read event: %v", err)
	}
	var rev busapi.ReadEvent
	if err := json.Unmarshal(msg.Data, &rev); err != nil {
		t.Fatal(err)
	}
	if want := (busapi.ReadEvent{UserID: bob.ID, ChatID: team.ID, Seq: 7, Unread: 3}); rev != want {
		t.Errorf("read event %+v, want %+v", rev, want)
	}
	// Backwards: the stored position comes back, nothing is announced.
	if code, _ := h.call(t, ctx, h.subj.ChatRead(), busapi.ReadRequest{UserID: bob.ID, ChatID: team.ID, Seq: 2}, &res); code != "" ||
		res != (busapi.ReadResult{ChatID: team.ID, Seq: 7, Unread: 3}) {
		t.Errorf("read backwards: %+v (%s), want position 7 kept", res, code)
	}
	if msg, err := readEvents.NextMsg(100 * time.Millisecond); err == nil {
		t.Errorf("read event %s for a position that did not move", msg.Data)
	}

	// Lists: counts only when asked for.
	counts := func(l busapi.ChatList) map[int64][3]int64 {
		out := map[int64][3]int64{}
		for _, c := range l.Chats {
			out[c.ID] = [3]int64{c.LastSeq, c.ReadSeq, int64(c.Unread)}
		}
		return out
	}
	var list busapi.ChatList
	if code, _ := h.call(t, ctx, h.subj.ChatList(), busapi.UserChatsRequest{UserID: bob.ID, Counts: true}, &list); code != "" {
		t.Fatalf("list: %s", code)
	}
	wantCounts := map[int64][3]int64{chats.GeneralChatID: {3, 0, 3}, dm.Chat.ID: {0, 0, 0}, team.ID: {10, 7, 3}}
	if diff := cmp.Diff(wantCounts, counts(list)); diff != "" || list.UnreadUnavailable {
		t.Errorf("bob's counts (unavailable %v) (-want +got):\n%s", list.UnreadUnavailable, diff)
	}
	if len(list.Chats) != 3 || !list.Chats[1].Direct || list.Chats[1].ID != dm.Chat.ID {
		t.Errorf("bob's chats %+v: want general, the direct chat (under alice), team", list.Chats)
	}
	list = busapi.ChatList{}
	if code, _ := h.call(t, ctx, h.subj.ChatList(), busapi.UserChatsRequest{UserID: bob.ID}, &list); code != "" {
		t.Fatalf("list: %s", code)
	}
	if diff := cmp.Diff(map[int64][3]int64{chats.GeneralChatID: {}, dm.Chat.ID: {}, team.ID: {}}, counts(list)); diff != "" {
		t.Errorf("counts not asked for (-want +got):\n%s", diff)
	}

	// History gone: the list works without counts (read positions only),
	// a read is refused as retryable.
	stop()
	list = busapi.ChatList{}
	if code, _ := h.call(t, ctx, h.subj.ChatList(), busapi.UserChatsRequest{UserID: bob.ID, Counts: true}, &list); code != "" {
		t.Fatalf("list with history down: %s", code)
	}
	wantCounts = map[int64][3]int64{chats.GeneralChatID: {}, dm.Chat.ID: {}, team.ID: {0, 7, 0}}
	if diff := cmp.Diff(wantCounts, counts(list)); diff != "" || !list.UnreadUnavailable {
		t.Errorf("counts with history down (unavailable %v) (-want +got):\n%s", list.UnreadUnavailable, diff)
	}
	if code, _ := h.call(t, ctx, h.subj.ChatRead(), busapi.ReadRequest{UserID: bob.ID, ChatID: team.ID, Seq: 9}, nil); code != protocol.CodeUnavailable {
		t.Errorf("read with history down: %q, want unavailable", code)
	}
}

func contains(s, sub string) bool { return sub == "" || strings.Contains(s, sub) }

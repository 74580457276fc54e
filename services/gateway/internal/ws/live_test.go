package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/time/rate"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/gateway/internal/hub"
)

// fakePresence answers from a fixed set of online users. With gate set,
// each query first signals asked and waits for gate.
type fakePresence struct {
	mu     sync.Mutex
	online map[int64]string
	gate   chan struct{}
	asked  chan struct{}
}

func (p *fakePresence) Connect(int64, string) {}
func (p *fakePresence) Disconnect(int64)      {}

func (p *fakePresence) wait() {
	if p.gate != nil {
		p.asked <- struct{}{}
		<-p.gate
	}
}

func (p *fakePresence) Online(_ context.Context, ids []int64) ([]protocol.Member, error) {
	p.wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := []protocol.Member{}
	for _, id := range ids {
		if name, ok := p.online[id]; ok {
			out = append(out, protocol.Member{ID: id, Username: name})
		}
	}
	return out, nil
}

func (p *fakePresence) OnlineAll(ctx context.Context) ([]protocol.Member, error) {
	p.mu.Lock()
	ids := make([]int64, 0, len(p.online))
	for id := range p.online {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	slices.Sort(ids)
	return p.Online(ctx, ids)
}

// chatUpstream answers chat.get from a map.
type chatUpstream struct {
	noUpstream
	chats map[int64]busapi.Chat
}

func (u chatUpstream) GetChat(_ context.Context, _, chatID int64) (busapi.Chat, error) {
	ch, ok := u.chats[chatID]
	if !ok {
		return busapi.Chat{}, &busapi.Error{Code: protocol.CodeChatNotFound, Message: "no such chat"}
	}
	return ch, nil
}

const teamChat = 4

func newLiveServer(t *testing.T, p Presence) (*Server, *fakeHub) {
	t.Helper()
	h := &fakeHub{joined: map[hub.Sink][]int64{}}
	up := chatUpstream{chats: map[int64]busapi.Chat{
		1:        {ID: 1, Name: "general", Everyone: true},
		teamChat: {ID: teamChat, Name: "team", Members: []protocol.Member{{ID: 7, Username: "alice"}, {ID: 8, Username: "bob"}}},
	}}
	s := NewServer(Config{SendQueue: 32}, up, h, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	if p != nil {
		s.UsePresence(p)
	}
	return s, h
}

// liveConn is a started connection of user on s, in the given chats.
func liveConn(s *Server, user busapi.User, chats ...int64) *Conn {
	c := &Conn{srv: s, user: user, closed: make(chan struct{}),
		positions: map[int64]*chatPosition{}, chats: chats}
	c.start([]byte(`{"type":"hello"}`))
	queued(c)
	return c
}

// events decodes what is queued on c.
func events(t *testing.T, c *Conn) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, raw := range queued(c) {
		var e map[string]any
		if err := json.Unmarshal([]byte(raw), &e); err != nil {
			t.Fatalf("queued %q: %v", raw, err)
		}
		out = append(out, e)
	}
	return out
}

func TestRateLimitRefusesThenCloses(t *testing.T) {
	t.Parallel()
	s, _ := newLiveServer(t, nil)
	c := liveConn(s, busapi.User{ID: 7, Username: "alice"}, 1)
	c.limiter = rate.NewLimiter(rate.Every(time.Hour), 2)
	for i := range 2 {
		if !c.allow(protocol.ClientEvent{ID: "ok"}) {
			t.Fatalf("request %d refused within the burst", i+1)
		}
	}
	for i := range s.cfg.SendRefusals {
		if c.allow(protocol.ClientEvent{ID: "over"}) {
			t.Fatalf("request over the limit %d allowed", i+1)
		}
		closed := c.isClosed()
		if last := i == s.cfg.SendRefusals-1; closed != last {
			t.Fatalf("after refusal %d closed = %v, want %v", i+1, closed, last)
		}
	}
	if c.closeCode != protocol.CloseRateLimited || !protocol.CloseShouldReconnect(c.closeCode) {
		t.Errorf("close code %d, want %d in the reconnect range", c.closeCode, protocol.CloseRateLimited)
	}
	got := events(t, c)
	if len(got) != s.cfg.SendRefusals {
		t.Fatalf("%d events queued, want %d errors: %v", len(got), s.cfg.SendRefusals, got)
	}
	for _, e := range got {
		if e["code"] != string(protocol.CodeRateLimited) || e["retryable"] != true || e["id"] != "over" {
			t.Errorf("answer %v, want a retryable rate_limited error for request over", e)
		}
	}
}

func TestTyping(t *testing.T) {
	t.Parallel()
	s, h := newLiveServer(t, nil)
	c := liveConn(s, busapi.User{ID: 7, Username: "alice"}, 1, teamChat)
	c.handleTyping(context.Background(), protocol.ClientEvent{Type: protocol.TypeTyping, ChatID: teamChat})
	c.handleTyping(context.Background(), protocol.ClientEvent{Type: protocol.TypeTyping, ChatID: teamChat}) // within the interval
	c.handleTyping(context.Background(), protocol.ClientEvent{Type: protocol.TypeTyping, ChatID: 1})
	// Once the interval has passed, the next one goes out.
	c.typedAt[teamChat] = time.Now().Add(-s.cfg.TypingInterval)
	c.handleTyping(context.Background(), protocol.ClientEvent{Type: protocol.TypeTyping, ChatID: teamChat})
	typing := `{"type":"typing","chat_id":%d,"user_id":7,"username":"alice"}`
	want := []string{
		"4:7:" + fmt.Sprintf(typing, teamChat),
		"1:7:" + fmt.Sprintf(typing, 1),
		"4:7:" + fmt.Sprintf(typing, teamChat),
	}
	h.mu.Lock()
	got := slices.Clone(h.published)
	h.mu.Unlock()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
	if q := queued(c); len(q) != 0 {
		t.Errorf("typing answered %v, want nothing", q)
	}

	c.handleTyping(context.Background(), protocol.ClientEvent{Type: protocol.TypeTyping, ID: "t1", ChatID: 99})
	c.handleTyping(context.Background(), protocol.ClientEvent{Type: protocol.TypeTyping, ID: "t2"})
	got2 := events(t, c)
	if len(got2) != 2 || got2[0]["code"] != string(protocol.CodeNotAMember) || got2[0]["id"] != "t1" ||
		got2[1]["code"] != string(protocol.CodeBadRequest) || got2[1]["id"] != "t2" {
		t.Errorf("typing in a chat not joined, and without a chat: %v, want not_a_member then bad_request", got2)
	}
}

func TestEphemeralOnlyToViewers(t *testing.T) {
	t.Parallel()
	s, _ := newLiveServer(t, &fakePresence{online: map[int64]string{}})
	viewer := liveConn(s, busapi.User{ID: 8, Username: "bob"}, 1, teamChat)
	other := liveConn(s, busapi.User{ID: 9, Username: "carol"}, 1, teamChat)
	viewer.handleView(context.Background(), protocol.ClientEvent{Type: protocol.TypeView, ChatID: teamChat})
	queued(viewer)
	for _, c := range []*Conn{viewer, other} {
		c.DeliverEphemeral(teamChat, []byte("typing"))
	}
	if got := queued(viewer); !cmp.Equal([]string{"typing"}, got) {
		t.Errorf("viewer got %v, want the typing event", got)
	}
	if got := queued(other); len(got) != 0 {
		t.Errorf("member not viewing got %v, want nothing", got)
	}
	// A full queue drops typing, never the connection.
	for range viewer.srv.cfg.SendQueue + 5 {
		viewer.DeliverEphemeral(teamChat, []byte("typing"))
	}
	if viewer.isClosed() {
		t.Error("typing closed a connection with a full queue")
	}
}

func TestViewPresence(t *testing.T) {
	t.Parallel()
	p := &fakePresence{online: map[int64]string{7: "alice", 9: "carol"}}
	s, _ := newLiveServer(t, p)
	ctx := context.Background()
	alice := liveConn(s, busapi.User{ID: 7, Username: "alice"}, 1, teamChat)
	carol := liveConn(s, busapi.User{ID: 9, Username: "carol"}, 1)
	dave := liveConn(s, busapi.User{ID: 10, Username: "dave"}, 1)

	alice.handleView(ctx, protocol.ClientEvent{Type: protocol.TypeView, ID: "v", ChatID: teamChat})
	carol.handleView(ctx, protocol.ClientEvent{Type: protocol.TypeView, ChatID: 1})
	carol.handleView(ctx, protocol.ClientEvent{Type: protocol.TypeView, ID: "v2", ChatID: teamChat}) // not hers
	dave.handleView(ctx, protocol.ClientEvent{Type: protocol.TypeView, ChatID: 1})
	dave.handleView(ctx, protocol.ClientEvent{Type: protocol.TypeView, ChatID: 0}) // views nothing now
	want := func(c *Conn, wantEvents ...string) {
		t.Helper()
		if diff := cmp.Diff(wantEvents, queued(c)); diff != "" {
			t.Errorf("%s got (-want +got):\n%s", c.user.Username, diff)
		}
	}
	want(alice, `{"type":"presence","chat_id":4,"online":[{"id":7,"username":"alice"}],"total":1}`)
	want(carol, `{"type":"presence","chat_id":1,"online":[{"id":7,"username":"alice"},{"id":9,"username":"carol"}],"total":2}`,
		`{"type":"error","id":"v2","code":"not_a_member","message":"you are not a member of this chat","retryable":false}`)
	want(dave, `{"type":"presence","chat_id":1,"online":[{"id":7,"username":"alice"},{"id":9,"username":"carol"}],"total":2}`)

	s.PresenceChanged(8, "bob", true)   // in team and general
	s.PresenceChanged(11, "erin", true) // in general only
	want(alice, `{"type":"presence_changed","chat_id":4,"user_id":8,"username":"bob","online":true}`)
	want(carol, `{"type":"presence_changed","chat_id":1,"user_id":8,"username":"bob","online":true}`,
		`{"type":"presence_changed","chat_id":1,"user_id":11,"username":"erin","online":true}`)
	want(dave)

	// team's members change: bob leaves, erin joins. Alice's view follows
	// and gets the list again.
	p.mu.Lock()
	p.online[11] = "erin"
	p.mu.Unlock()
	s.chatViewsChanged(ctx, busapi.Chat{ID: teamChat, Members: []protocol.Member{{ID: 7, Username: "alice"}, {ID: 11, Username: "erin"}}})
	want(alice, `{"type":"presence","chat_id":4,"online":[{"id":7,"username":"alice"},{"id":11,"username":"erin"}],"total":2}`)
	s.PresenceChanged(8, "bob", false)
	s.PresenceChanged(11, "erin", false)
	want(alice, `{"type":"presence_changed","chat_id":4,"user_id":11,"username":"erin","online":false}`)

	// alice is removed from team: her view ends.
	s.chatViewsChanged(ctx, busapi.Chat{ID: teamChat, Members: []protocol.Member{{ID: 11, Username: "erin"}}})
	s.PresenceChanged(11, "erin", true)
	want(alice)
	s.viewMu.Lock()
	defer s.viewMu.Unlock()
	if alice.view != nil || len(s.viewers[teamChat]) != 0 || len(s.watchers[11]) != 0 {
		t.Errorf("alice's view of team still indexed: view %v viewers %v watchers %v", alice.view, s.viewers[teamChat], s.watchers[11])
	}
}

// TestChangesFollowTheList: a change that arrives while the list is being
// read waits and follows the list, so the list never undoes it.
func TestChangesFollowTheList(t *testing.T) {
	t.Parallel()
	p := &fakePresence{online: map[int64]string{7: "alice"}, gate: make(chan struct{}), asked: make(chan struct{})}
	s, _ := newLiveServer(t, p)
	alice := liveConn(s, busapi.User{ID: 7, Username: "alice"}, 1, teamChat)
	done := make(chan struct{})
	go func() {
		defer close(done)
		alice.handleView(context.Background(), protocol.ClientEvent{Type: protocol.TypeView, ChatID: teamChat})
	}()
	<-p.asked
	s.PresenceChanged(8, "bob", true)
	close(p.gate)
	<-done
	want := []string{
		`{"type":"presence","chat_id":4,"online":[{"id":7,"username":"alice"}],"total":1}`,
		`{"type":"presence_changed","chat_id":4,"user_id":8,"username":"bob","online":true}`,
	}
	if diff := cmp.Diff(want, queued(alice)); diff != "" {
		t.Errorf("queue (-want +got):\n%s", diff)
	}
}

// TestPresenceBurstNeverCloses: a burst of changes (a dead gateway's users
// going offline at once) fills at most half of a viewer's queue, leaving the
// rest to messages; the changes that did not fit are replaced by a fresh
// list once the client has read.
func TestPresenceBurstNeverCloses(t *testing.T) {
	t.Parallel()
	p := &fakePresence{online: map[int64]string{7: "alice"}}
	s, _ := newLiveServer(t, p)
	alice := liveConn(s, busapi.User{ID: 7, Username: "alice"}, 1)
	alice.handleView(context.Background(), protocol.ClientEvent{Type: protocol.TypeView, ChatID: 1})
	queued(alice)
	for i := range 100 {
		s.PresenceChanged(int64(100+i), fmt.Sprintf("user%d", i), false)
	}
	if alice.isClosed() {
		t.Fatal("a burst of presence changes closed the connection")
	}
	if n := alice.queued(); n != alice.srv.cfg.SendQueue/2 {
		t.Errorf("%d changes queued, want half the queue (%d)", n, alice.srv.cfg.SendQueue/2)
	}
	for range alice.srv.cfg.SendQueue / 2 {
		alice.Deliver([]byte(`{"type":"message"}`)) // messages still fit
	}
	if alice.isClosed() {
		t.Fatal("messages after the burst closed the connection")
	}
	// The client reads; a fresh list follows.
	var got []string
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
		got = append(got, queued(alice)...)
		return slices.Contains(got, `{"type":"presence","chat_id":1,"online":[{"id":7,"username":"alice"}],"total":1}`)
	}, func() string { return fmt.Sprintf("a fresh presence list among %d events", len(got)) })
}

// A presence list names at most MaxPresenceList members and counts them all.
func TestPresenceListBounded(t *testing.T) {
	t.Parallel()
	online := map[int64]string{}
	for i := range protocol.MaxPresenceList + 20 {
		online[int64(100+i)] = fmt.Sprintf("user%04d", i)
	}
	s, _ := newLiveServer(t, &fakePresence{online: online})
	c := liveConn(s, busapi.User{ID: 100, Username: "user0000"}, 1)
	c.handleView(context.Background(), protocol.ClientEvent{Type: protocol.TypeView, ChatID: 1})
	got := queued(c)
	if len(got) != 1 {
		t.Fatalf("got %d events, want one presence list", len(got))
	}
	var p protocol.Presence
	if err := json.Unmarshal([]byte(got[0]), &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Online) != protocol.MaxPresenceList || p.Total != protocol.MaxPresenceList+20 {
		t.Errorf("presence lists %d of total %d; want %d of %d", len(p.Online), p.Total, protocol.MaxPresenceList, protocol.MaxPresenceList+20)
	}
	if p.Online[0].Username != "user0000" || p.Online[len(p.Online)-1].Username != fmt.Sprintf("user%04d", protocol.MaxPresenceList-1) {
		t.Errorf("presence lists %q to %q; want the first by username", p.Online[0].Username, p.Online[len(p.Online)-1].Username)
	}
}

// hookPresence is a fakePresence that runs hook (when set) before each
// query: to make one hang or fail.
type hookPresence struct {
	fakePresence
	hookMu sync.Mutex
	hook   func(ctx context.Context) error
}

func (p *hookPresence) setHook(h func(ctx context.Context) error) {
	p.hookMu.Lock()
	defer p.hookMu.Unlock()
	p.hook = h
}

func (p *hookPresence) before(ctx context.Context) error {
	p.hookMu.Lock()
	h := p.hook
	p.hookMu.Unlock()
	if h == nil {
		return nil
	}
	return h(ctx)
}

func (p *hookPresence) Online(ctx context.Context, ids []int64) ([]protocol.Member, error) {
	if err := p.before(ctx); err != nil {
		return nil, err
	}
	return p.fakePresence.Online(ctx, ids)
}

func (p *hookPresence) OnlineAll(ctx context.Context) ([]protocol.Member, error) {
	if err := p.before(ctx); err != nil {
		return nil, err
	}
	return p.fakePresence.OnlineAll(ctx)
}

// presenceLists returns the presence lists among the events queued on c.
func presenceLists(t *testing.T, c *Conn) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, e := range events(t, c) {
		if e["type"] == protocol.TypePresence {
			out = append(out, e)
		}
	}
	return out
}

// TestRefreshViewsChatsInParallel: a refresh asks the chats' presence at
// once, so a slow chat does not hold back (or use up the time of) the others.
func TestRefreshViewsChatsInParallel(t *testing.T) {
	t.Parallel()
	p := &hookPresence{fakePresence: fakePresence{online: map[int64]string{7: "alice", 9: "carol"}}}
	s, _ := newLiveServer(t, p)
	ctx := context.Background()
	alice := liveConn(s, busapi.User{ID: 7, Username: "alice"}, 1, teamChat)
	carol := liveConn(s, busapi.User{ID: 9, Username: "carol"}, 1)
	alice.handleView(ctx, protocol.ClientEvent{Type: protocol.TypeView, ChatID: teamChat})
	carol.handleView(ctx, protocol.ClientEvent{Type: protocol.TypeView, ChatID: 1})
	queued(alice)
	queued(carol)

	// The first query of the refresh takes until the test lets it go.
	var calls atomic.Int32
	hung, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo)
	p.setHook(func(context.Context) error {
		if calls.Add(1) == 1 {
			close(hung)
			<-release
		}
		return nil
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.RefreshViews(ctx)
	}()
	<-hung
	var got int
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
		got += len(presenceLists(t, alice)) + len(presenceLists(t, carol))
		return got == 1
	}, func() string {
		return fmt.Sprintf("%d presence lists while one chat's query hangs, want the other chat's", got)
	})
	letGo()
	<-done
	if got += len(presenceLists(t, alice)) + len(presenceLists(t, carol)); got != 2 {
		t.Errorf("%d presence lists after the refresh, want 2", got)
	}
}

// TestRefreshViewsRetriesFailures: a chat whose query failed during a
// refresh is asked again until its viewers have their list.
func TestRefreshViewsRetriesFailures(t *testing.T) {
	t.Parallel()
	p := &hookPresence{fakePresence: fakePresence{online: map[int64]string{7: "alice"}}}
	s, _ := newLiveServer(t, p)
	alice := liveConn(s, busapi.User{ID: 7, Username: "alice"}, 1, teamChat)
	alice.handleView(context.Background(), protocol.ClientEvent{Type: protocol.TypeView, ChatID: teamChat})
	queued(alice)

	var calls atomic.Int32
	p.setHook(func(context.Context) error {
		if calls.Add(1) == 1 {
			return errors.New("redis down")
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s.RefreshViews(ctx)
	var got []map[string]any
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
		got = append(got, presenceLists(t, alice)...)
		return len(got) > 0
	}, func() string { return fmt.Sprintf("presence lists %v after a failed refresh, want one", got) })
	if want := []any{map[string]any{"id": float64(7), "username": "alice"}}; !cmp.Equal(want, got[0]["online"]) {
		t.Errorf("list after the retry %v, want alice online", got[0])
	}
}

// racingUpstream runs during once, while answering chat.get: a removal
// from the chat that lands while a view is being looked up.
type racingUpstream struct {
	chatUpstream
	once   *sync.Once
	during *func()
}

func (u racingUpstream) GetChat(ctx context.Context, userID, chatID int64) (busapi.Chat, error) {
	u.once.Do(*u.during)
	return u.chatUpstream.GetChat(ctx, userID, chatID)
}

// TestViewRacingRemoval: a user removed from a chat while their view of it
// is looked up does not end up viewing it.
func TestViewRacingRemoval(t *testing.T) {
	t.Parallel()
	var during func()
	up := racingUpstream{chatUpstream: chatUpstream{chats: map[int64]busapi.Chat{
		teamChat: {ID: teamChat, Name: "team", Members: []protocol.Member{{ID: 7, Username: "alice"}}},
	}}, once: &sync.Once{}, during: &during}
	s := NewServer(Config{SendQueue: 32}, up, &fakeHub{joined: map[hub.Sink][]int64{}}, telemetry.NewLogger(io.Discard, 0),
		noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	s.UsePresence(&fakePresence{online: map[int64]string{7: "alice"}})
	alice := liveConn(s, busapi.User{ID: 7, Username: "alice"}, 1, teamChat)
	during = func() {
		if _, err := alice.syncChats(context.Background(), []int64{1}); err != nil {
			t.Errorf("remove from team: %v", err)
		}
	}
	alice.handleView(context.Background(), protocol.ClientEvent{Type: protocol.TypeView, ID: "v", ChatID: teamChat})
	got := events(t, alice)
	if len(got) != 1 || got[0]["code"] != string(protocol.CodeNotAMember) || got[0]["id"] != "v" {
		t.Errorf("view of a chat left meanwhile answered %v, want not_a_member", got)
	}
	s.viewMu.Lock()
	defer s.viewMu.Unlock()
	if alice.view != nil || len(s.viewers[teamChat]) != 0 || len(s.watchers[7]) != 0 {
		t.Errorf("view of a chat left meanwhile indexed: view %v viewers %v watchers %v", alice.view, s.viewers[teamChat], s.watchers[7])
	}
}

// slowHub publishes ephemeral events only once the caller gives up (or
// the test ends): a Redis that does not answer.
type slowHub struct {
	*fakeHub
	release chan struct{}
}

func (h slowHub) PublishEphemeral(ctx context.Context, _, _ int64, _ []byte) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-h.release:
		return errors.New("released by the test")
	}
}

// TestTypingBoundedWhenRedisHangs: publishing typing gives up soon, so a
// slow Redis never stalls the connection's reader.
func TestTypingBoundedWhenRedisHangs(t *testing.T) {
	t.Parallel()
	h := slowHub{fakeHub: &fakeHub{joined: map[hub.Sink][]int64{}}, release: make(chan struct{})}
	t.Cleanup(func() { close(h.release) })
	s := NewServer(Config{SendQueue: 32}, chatUpstream{}, h, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	c := liveConn(s, busapi.User{ID: 7, Username: "alice"}, teamChat)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.handleTyping(context.Background(), protocol.ClientEvent{Type: protocol.TypeTyping, ChatID: teamChat})
	}()
	testenv.Eventually(t, 10*time.Second, func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}, "typing given up while Redis hangs")
	if q := queued(c); len(q) != 0 {
		t.Errorf("typing answered %v, want nothing (best effort)", q)
	}
}

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
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/gateway/internal/hub"
)

// fakeHub records joins and leaves per sink.
type fakeHub struct {
	mu        sync.Mutex
	joined    map[hub.Sink][]int64
	failFor   int64
	published []string // ephemeral events, as "chat:sender:event"
}

func (h *fakeHub) Join(_ context.Context, s hub.Sink, ids []int64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if slices.Contains(ids, h.failFor) {
		return errors.New("redis down")
	}
	h.joined[s] = append(h.joined[s], ids...)
	return nil
}

func (h *fakeHub) Leave(s hub.Sink, ids []int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.joined[s] = slices.DeleteFunc(h.joined[s], func(id int64) bool { return slices.Contains(ids, id) })
}

func (h *fakeHub) PublishEphemeral(_ context.Context, chatID, senderID int64, event []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.published = append(h.published, fmt.Sprintf("%d:%d:%s", chatID, senderID, event))
	return nil
}

func (h *fakeHub) of(s hub.Sink) []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := slices.Clone(h.joined[s])
	slices.Sort(out)
	return out
}

type noUpstream struct{}

func (noUpstream) Session(context.Context, string) (busapi.Session, error) {
	return busapi.Session{}, nil
}
func (noUpstream) ListChats(context.Context, int64) ([]busapi.Chat, error) { return nil, nil }
func (noUpstream) UserChats(context.Context, int64) ([]int64, error)       { return nil, nil }
func (noUpstream) History(context.Context, busapi.HistoryRequest) (busapi.HistoryPage, error) {
	return busapi.HistoryPage{}, nil
}
func (noUpstream) Latest(context.Context, []int64) (map[string]int64, error) { return nil, nil }
func (noUpstream) Read(context.Context, busapi.ReadRequest) (busapi.ReadResult, error) {
	return busapi.ReadResult{}, busapi.Errorf(protocol.CodeUnavailable, "no upstream")
}
func (noUpstream) Send(context.Context, busapi.SendRequest) (busapi.SendResult, error) {
	return busapi.SendResult{}, nil
}
func (noUpstream) Change(context.Context, busapi.ChangeRequest) (busapi.SendResult, error) {
	return busapi.SendResult{}, nil
}

func (noUpstream) GetChat(context.Context, int64, int64) (busapi.Chat, error) {
	return busapi.Chat{}, nil
}

func newTestConn(t testing.TB, queue int) (*Conn, *fakeHub) {
	t.Helper()
	h := &fakeHub{joined: map[hub.Sink][]int64{}}
	s := NewServer(Config{SendQueue: queue}, noUpstream{}, h, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	return &Conn{srv: s, user: busapi.User{ID: 7}, closed: make(chan struct{}),
		positions: map[int64]*chatPosition{}}, h
}

// queued takes what is queued on c (a connection without a socket has no
// writer).
func queued(c *Conn) []string {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	var out []string
	for _, ev := range c.queue {
		out = append(out, string(ev))
	}
	c.queue = nil
	return out
}

func TestHelloComesFirst(t *testing.T) {
	t.Parallel()
	c, _ := newTestConn(t, 8)
	c.Deliver([]byte("early-1"))
	c.Deliver([]byte("early-2"))
	c.start([]byte("hello"))
	c.Deliver([]byte("late"))
	if diff := cmp.Diff([]string{"hello", "early-1", "early-2", "late"}, queued(c)); diff != "" {
		t.Errorf("queue (-want +got):\n%s", diff)
	}
}

func TestFullQueueClosesWithResumeCode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		before int // events delivered before start
		after  int // events delivered after start
		closed bool
	}{
		{name: "fits", before: 1, after: 2, closed: false},
		{name: "overflows after start", before: 0, after: 5, closed: true},
		{name: "overflows before start", before: 5, after: 0, closed: true},
		{name: "early events and hello fill the queue", before: 3, after: 0, closed: false},
		{name: "hello would not fit behind early events", before: 4, after: 0, closed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := newTestConn(t, 4)
			for range tc.before {
				c.Deliver([]byte("e"))
			}
			c.start([]byte("hello"))
			for range tc.after {
				c.Deliver([]byte("e"))
			}
			select {
			case <-c.closed:
				if !tc.closed {
					t.Fatalf("closed with %d, want open", c.closeCode)
				}
				if c.closeCode != protocol.CloseSlowConsumer || !protocol.CloseShouldReconnect(c.closeCode) {
					t.Errorf("close code %d, want %d (reconnect and resume)", c.closeCode, protocol.CloseSlowConsumer)
				}
			default:
				if tc.closed {
					t.Fatal("still open, want closed as a slow consumer")
				}
			}
		})
	}
}

func TestSyncChats(t *testing.T) {
	t.Parallel()
	c, h := newTestConn(t, 4)
	ctx := context.Background()
	steps := []struct {
		want       []int64
		wantBefore []int64
	}{
		{want: []int64{1, 2}, wantBefore: nil},
		{want: []int64{1, 3}, wantBefore: []int64{1, 2}},
		{want: []int64{1, 3}, wantBefore: []int64{1, 3}},
		{want: []int64{}, wantBefore: []int64{1, 3}},
	}
	for i, st := range steps {
		before, err := c.syncChats(ctx, st.want)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(st.wantBefore, before, cmpEmpty); diff != "" {
			t.Errorf("step %d before (-want +got):\n%s", i, diff)
		}
		if diff := cmp.Diff(st.want, h.of(c), cmpEmpty); diff != "" {
			t.Errorf("step %d hub (-want +got):\n%s", i, diff)
		}
	}

	// A failed join changes nothing; the end leaves everything.
	if _, err := c.syncChats(ctx, []int64{4, 5}); err != nil {
		t.Fatal(err)
	}
	h.failFor = 6
	if _, err := c.syncChats(ctx, []int64{4, 6}); err == nil {
		t.Fatal("sync with a failing join succeeded")
	}
	if diff := cmp.Diff([]int64{4, 5}, c.currentChats()); diff != "" {
		t.Errorf("chats after a failed join (-want +got):\n%s", diff)
	}
	c.end()
	if got := h.of(c); len(got) != 0 {
		t.Errorf("still joined to %v after the end", got)
	}
	if _, err := c.syncChats(ctx, []int64{7}); err != nil || len(h.of(c)) != 0 {
		t.Errorf("an ended connection joined %v (err %v)", h.of(c), err)
	}
}

var cmpEmpty = cmp.Comparer(func(a, b []int64) bool { return len(a) == 0 && len(b) == 0 || slices.Equal(a, b) })

// listUpstream answers ListChats with the chats in ids.
type listUpstream struct {
	noUpstream
	ids []int64
}

func (u listUpstream) UserChats(context.Context, int64) ([]int64, error) {
	return slices.Clone(u.ids), nil
}

func (u listUpstream) ListChats(context.Context, int64) ([]busapi.Chat, error) {
	out := make([]busapi.Chat, len(u.ids))
	for i, id := range u.ids {
		out[i] = busapi.Chat{ID: id, Name: fmt.Sprint("chat-", id)}
	}
	return out, nil
}

// TestReconcileAnnouncesEveryChange: whatever triggers a reconciliation (a
// chat event about another chat, a periodic resync), the connection is told
// of every chat it joined and every chat it left.
func TestReconcileAnnouncesEveryChange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		before []int64
		now    []int64
		want   []string
	}{
		{"removed from 5, added to 9", []int64{1, 5}, []int64{1, 9},
			[]string{`{"type":"chat","chat":{"id":9,"name":"chat-9","description":"","created_at":"0001-01-01T00:00:00Z"}}`, `{"type":"chat_removed","chat_id":5}`}},
		{"added to 7 silently missed", []int64{1}, []int64{1, 7},
			[]string{`{"type":"chat","chat":{"id":7,"name":"chat-7","description":"","created_at":"0001-01-01T00:00:00Z"}}`}},
		{"nothing changed", []int64{1, 2}, []int64{1, 2}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, h := newTestConn(t, 16)
			c.srv.up = listUpstream{ids: tc.now}
			c.start([]byte("hello"))
			queued(c)
			if _, err := c.syncChats(context.Background(), tc.before); err != nil {
				t.Fatal(err)
			}
			c.srv.add(c)
			c.srv.Resync(context.Background())
			if diff := cmp.Diff(tc.want, queued(c)); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.now, h.of(c)); diff != "" {
				t.Errorf("hub (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeliverMessageOncePerSequence(t *testing.T) {
	t.Parallel()
	c, _ := newTestConn(t, 16)
	c.start([]byte("hello"))
	queued(c)
	c.DeliverMessage(1, 5, false, []byte("m5"))
	c.DeliverMessage(1, 5, false, []byte("m5 again")) // a retry published again
	c.DeliverMessage(1, 4, false, []byte("m4 late"))  // already behind
	c.DeliverMessage(2, 1, false, []byte("other chat"))
	c.DeliverMessage(1, 6, false, []byte("m6"))
	if diff := cmp.Diff([]string{"m5", "other chat", "m6"}, queued(c)); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}

	// During a resume the chat's live messages are held, not sent.
	c.holdForResume(map[int64]int64{3: 0})
	c.DeliverMessage(3, 1, false, []byte("held"))
	if got := queued(c); len(got) != 0 {
		t.Errorf("delivered %v during the replay, want nothing", got)
	}
}

func TestParseResume(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    map[int64]int64
		wantErr bool
	}{
		{in: "", want: map[int64]int64{}},
		{in: "1:41", want: map[int64]int64{1: 41}},
		{in: "1:41,4:0", want: map[int64]int64{1: 41, 4: 0}},
		{in: "x", wantErr: true},
		{in: "1:-1", wantErr: true},
		{in: "0:5", wantErr: true},
		{in: "1:2,", wantErr: true},
	}
	for _, tc := range tests {
		got, err := ParseResume(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseResume(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if !tc.wantErr {
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseResume(%q) (-want +got):\n%s", tc.in, diff)
			}
		}
	}
}

// historyUpstream serves stored messages 1..n of every chat.
type historyUpstream struct {
	noUpstream
	n int64
}

func (u historyUpstream) History(_ context.Context, req busapi.HistoryRequest) (busapi.HistoryPage, error) {
	var page busapi.HistoryPage
	for seq := req.AfterSeq + 1; seq <= u.n && len(page.Messages) < req.Limit; seq++ {
		page.Messages = append(page.Messages, protocol.Message{Type: protocol.TypeMessage, ChatID: req.ChatID, Seq: seq})
	}
	return page, nil
}

// TestGapIsFilledFromHistory: a live message that skips sequence numbers
// (pub/sub lost some) makes the connection fetch the missing ones and send
// them first, in order; nothing is sent twice.
func TestGapIsFilledFromHistory(t *testing.T) {
	t.Parallel()
	c, _ := newTestConn(t, 32)
	c.srv.up = historyUpstream{n: 9}
	c.start([]byte("hello"))
	queued(c)
	msg := func(seq int64) []byte {
		return fmt.Appendf(nil, `{"type":"message","chat_id":1,"seq":%d,"sender_id":0,"sender":"","client_msg_id":"","text":"","sent_at":"0001-01-01T00:00:00Z"}`, seq)
	}
	c.DeliverMessage(1, 5, false, msg(5))
	c.DeliverMessage(1, 8, false, msg(8)) // 6 and 7 were lost
	c.DeliverMessage(1, 9, false, msg(9)) // arrives while the gap is being filled
	var got []string
	testenv.Eventually(t, 5*time.Second, func() bool {
		got = append(got, queued(c)...)
		return len(got) >= 5
	}, "five messages delivered")
	want := []string{string(msg(5)), string(msg(6)), string(msg(7)), string(msg(8)), string(msg(9))}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}
	c.DeliverMessage(1, 9, false, msg(9))
	c.DeliverMessage(1, 10, false, msg(10))
	if diff := cmp.Diff([]string{string(msg(10))}, queued(c)); diff != "" {
		t.Errorf("after the gap (-want +got):\n%s", diff)
	}
}

// steppedHistory serves messages up to limits[i] on its i-th read (the last
// limit after that), like a history that more messages reach meanwhile.
type steppedHistory struct {
	noUpstream
	mu     sync.Mutex
	limits []int64
	reads  int
}

func (u *steppedHistory) History(_ context.Context, req busapi.HistoryRequest) (busapi.HistoryPage, error) {
	u.mu.Lock()
	n := u.limits[min(u.reads, len(u.limits)-1)]
	u.reads++
	u.mu.Unlock()
	return historyUpstream{n: n}.History(context.Background(), req)
}

func seqOf(t *testing.T, ev string) int64 {
	t.Helper()
	var m protocol.Message
	if err := json.Unmarshal([]byte(ev), &m); err != nil {
		t.Fatalf("not a message: %q", ev)
	}
	return m.Seq
}

// TestReplayReadsAgainAcrossAHole: held live messages that do not follow on
// from the replayed history (one was lost) make the replay read history
// again instead of skipping the lost one.
func TestReplayReadsAgainAcrossAHole(t *testing.T) {
	t.Parallel()
	c, _ := newTestConn(t, 64)
	c.srv.up = &steppedHistory{limits: []int64{10, 12}}
	c.start([]byte("hello"))
	queued(c)
	c.holdForResume(map[int64]int64{1: 5})
	// 12 arrived live while history still ended at 10; 11 was lost.
	c.DeliverMessage(1, 12, false, []byte(`{"type":"message","chat_id":1,"seq":12}`))
	last, ok := c.replay(context.Background(), 1, 5)
	if !ok || last != 12 {
		t.Fatalf("replay reached %d (ok %v), want 12", last, ok)
	}
	var got []int64
	for _, ev := range queued(c) {
		got = append(got, seqOf(t, ev))
	}
	if diff := cmp.Diff([]int64{6, 7, 8, 9, 10, 11, 12}, got); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}
}

// TestLongReplayToAReadingClient: a replay much longer than the send queue
// reaches a client that keeps reading, in order, without closing it.
func TestLongReplayToAReadingClient(t *testing.T) {
	t.Parallel()
	c, _ := newTestConn(t, 16)
	c.srv.up = historyUpstream{n: 300}
	c.start([]byte("hello"))
	queued(c)
	c.holdForResume(map[int64]int64{1: 0})
	var got []int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The client's reading, as the writer takes the queue.
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for len(got) < 300 {
			for _, ev := range queued(c) {
				got = append(got, seqOf(t, ev))
			}
			select {
			case <-tick.C:
			case <-c.closed:
				return
			}
		}
	}()
	last, ok := c.replay(context.Background(), 1, 0)
	<-done
	if !ok || last != 300 {
		t.Fatalf("replay reached %d (ok %v), want 300", last, ok)
	}
	select {
	case <-c.closed:
		t.Fatalf("closed with %d during the replay", c.closeCode)
	default:
	}
	for i, seq := range got {
		if seq != int64(i+1) {
			t.Fatalf("message %d has seq %d, want %d", i, seq, i+1)
		}
	}
}

// TestDuplicateKeepsThePosition: a retried message published again does
// not become the chat's position, so the next live message is no gap.
func TestDuplicateKeepsThePosition(t *testing.T) {
	t.Parallel()
	c, _ := newTestConn(t, 8)
	c.srv.up = historyUpstream{n: 1000}
	c.start([]byte("hello"))
	queued(c)
	c.DeliverMessage(1, 5, true, []byte("retried 5"))
	c.DeliverMessage(1, 101, false, []byte("live 101"))
	if diff := cmp.Diff([]string{"retried 5", "live 101"}, queued(c)); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}
}

// TestDuplicatePastAGapFillsIt: a duplicate (its original lost on this
// connection) that lies beyond the next expected sequence is a gap like any
// live message: the missing messages come first, in order.
func TestDuplicatePastAGapFillsIt(t *testing.T) {
	t.Parallel()
	c, _ := newTestConn(t, 16)
	c.srv.up = historyUpstream{n: 9}
	c.start([]byte("hello"))
	queued(c)
	c.DeliverMessage(1, 5, false, []byte(`{"type":"message","chat_id":1,"seq":5}`))
	c.DeliverMessage(1, 9, true, []byte(`{"type":"message","chat_id":1,"seq":9}`))
	var got []int64
	testenv.Eventually(t, 5*time.Second, func() bool {
		for _, ev := range queued(c) {
			got = append(got, seqOf(t, ev))
		}
		return len(got) >= 5
	}, "the gap before the duplicate is filled")
	if diff := cmp.Diff([]int64{5, 6, 7, 8, 9}, got); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}
}

// latestUpstream serves history 1..n and reports n as the latest of every
// chat.
type latestUpstream struct{ historyUpstream }

func (u latestUpstream) Latest(_ context.Context, ids []int64) (map[string]int64, error) {
	out := map[string]int64{}
	for _, id := range ids {
		out[fmt.Sprint(id)] = u.n
	}
	return out, nil
}

// TestPositionCheckCatchesALostLastMessage: with no later message to reveal
// it, a lost last message is found by the periodic position check (once it
// has been stored for a whole check interval) and sent from history.
func TestPositionCheckCatchesALostLastMessage(t *testing.T) {
	t.Parallel()
	c, _ := newTestConn(t, 16)
	c.srv.up = latestUpstream{historyUpstream{n: 7}}
	if _, err := c.syncChats(context.Background(), []int64{1}); err != nil {
		t.Fatal(err)
	}
	c.srv.add(c)
	c.start([]byte("hello"))
	queued(c)
	c.DeliverMessage(1, 5, false, fmt.Appendf(nil, `{"type":"message","chat_id":1,"seq":5}`))
	queued(c)

	c.srv.CheckPositions(context.Background()) // records 7 as stored
	if got := queued(c); len(got) != 0 {
		t.Fatalf("first check sent %v, want nothing yet", got)
	}
	c.srv.CheckPositions(context.Background()) // 6 and 7 still missing
	var got []int64
	testenv.Eventually(t, 5*time.Second, func() bool {
		for _, ev := range queued(c) {
			got = append(got, seqOf(t, ev))
		}
		return len(got) >= 2
	}, "the missing messages arrive")
	if diff := cmp.Diff([]int64{6, 7}, got); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}
}

// countingHistory serves history 1..n and counts the reads.
type countingHistory struct {
	historyUpstream
	reads *atomic.Int32
}

func (u countingHistory) History(ctx context.Context, req busapi.HistoryRequest) (busapi.HistoryPage, error) {
	u.reads.Add(1)
	return u.historyUpstream.History(ctx, req)
}

// TestReplaySendsHeldWithoutReadingAgain: live messages held during a
// replay that follow on from history are sent without another history read,
// so a busy chat's replay ends instead of reading history round after round.
func TestReplaySendsHeldWithoutReadingAgain(t *testing.T) {
	t.Parallel()
	c, _ := newTestConn(t, 64)
	var reads atomic.Int32
	c.srv.up = countingHistory{historyUpstream{n: 10}, &reads}
	c.start([]byte("hello"))
	queued(c)
	c.holdForResume(map[int64]int64{1: 0})
	for seq := int64(11); seq <= 20; seq++ {
		c.DeliverMessage(1, seq, false, fmt.Appendf(nil, `{"type":"message","chat_id":1,"seq":%d}`, seq))
	}
	last, ok := c.replay(context.Background(), 1, 0)
	if !ok || last != 20 {
		t.Fatalf("replay reached %d (ok %v), want 20", last, ok)
	}
	var got []int64
	for _, ev := range queued(c) {
		got = append(got, seqOf(t, ev))
	}
	want := make([]int64, 20)
	for i := range want {
		want[i] = int64(i + 1)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("history read %d times, want once", n)
	}
}

// TestPresenceGauges: gateway_users_online counts users with an open
// connection, however many each has; gateway_connections counts them all.
func TestPresenceGauges(t *testing.T) {
	t.Parallel()
	s := NewServer(Config{}, noUpstream{}, &fakeHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	conn := func(user int64) *Conn {
		return &Conn{srv: s, user: busapi.User{ID: user}, closed: make(chan struct{}), positions: map[int64]*chatPosition{}}
	}
	a1, a2, b := conn(1), conn(1), conn(2)
	steps := []struct {
		name         string
		do           func()
		users, conns float64
	}{
		{"first tab", func() { s.add(a1) }, 1, 1},
		{"second tab of the same user", func() { s.add(a2) }, 1, 2},
		{"another user", func() { s.add(b) }, 2, 3},
		{"one tab closed", func() { s.remove(a1) }, 2, 2},
		{"closed twice", func() { s.remove(a1) }, 2, 2},
		{"last tab closed", func() { s.remove(a2) }, 1, 1},
	}
	for _, st := range steps {
		st.do()
		if got := testutil.ToFloat64(s.metrics.usersOnline); got != st.users {
			t.Errorf("%s: gateway_users_online %v, want %v", st.name, got, st.users)
		}
		if got := testutil.ToFloat64(s.metrics.connections); got != st.conns {
			t.Errorf("%s: gateway_connections %v, want %v", st.name, got, st.conns)
		}
	}
}

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

// generalChat is the chat every user is in.
const generalChat = 1

// scenario is a running stack with clients sending in one chat.
type scenario struct {
	t       *testing.T
	s       *stack
	rec     *Recorder
	clients []*chatClient
}

// newScenario starts a stack and n clients in the chat "general", half of
// them connecting to each gateway first, each sending one message per
// interval.
func newScenario(t *testing.T, opts stackOptions, n int, interval time.Duration) *scenario {
	t.Helper()
	s := startStack(t, opts)
	sc := &scenario{t: t, s: s, rec: NewRecorder()}
	gws := s.gateways()
	users := signUpAll(t, gws[0], testenv.UniqueName("u")+"-", n)
	for i, u := range users {
		c := newChatClient(t, u, generalChat, gws, i%len(gws), sc.rec, interval)
		sc.clients = append(sc.clients, c)
	}
	t.Cleanup(func() {
		for _, c := range sc.clients {
			c.close()
		}
	})
	for _, c := range sc.clients {
		c.start()
	}
	testenv.Eventually(t, 30*time.Second, func() bool {
		for _, c := range sc.clients {
			c.mu.Lock()
			ok := c.connects > 0
			c.mu.Unlock()
			if !ok {
				return false
			}
		}
		return true
	}, "every client connected")
	return sc
}

// waitAcked waits until at least n more sends are acknowledged than now.
func (sc *scenario) waitAcked(n int, what string) {
	sc.t.Helper()
	want := sc.rec.Count(Acked) + n
	testenv.EventuallyDescribe(sc.t, 60*time.Second, func() bool { return sc.rec.Count(Acked) >= want },
		func() string {
			return fmt.Sprintf("%d acknowledged sends %s (have %d; refusals %d)", want, what, sc.rec.Count(Acked), sc.rec.Refusals())
		})
}

// finish stops the sending, waits until the system is quiet (every client's
// last message answered, every acknowledged send stored, the stored count
// unchanged between two polls, every client at the chat's last stored
// sequence), then checks what was stored and seen, failing on any finding.
// It returns the stored messages.
func (sc *scenario) finish() []Row {
	sc.t.Helper()
	for _, c := range sc.clients {
		c.stopSending()
	}
	testenv.Eventually(sc.t, 90*time.Second, func() bool {
		for _, c := range sc.clients {
			if !c.idle() {
				return false
			}
		}
		return true
	}, "every client's last send answered")
	// Quiet is not required here (the checker reports what is missing),
	// so the deadline only bounds the wait.
	acked := map[string]bool{}
	for _, s := range sc.rec.Sends() {
		if s.Outcome == Acked {
			acked[sendKey(s.ChatID, s.SenderID, s.ClientMsgID)] = true
		}
	}
	prev := int64(-1)
	var state string
	quiet := poll(60*time.Second, 100*time.Millisecond, func() bool {
		keys, count, last, err := sc.storedKeys()
		if err != nil {
			prev, state = -1, err.Error()
			return false
		}
		stable := count == prev
		prev = count
		missing := 0
		for k := range acked {
			if !keys[k] {
				missing++
			}
		}
		behind := 0
		for _, c := range sc.clients {
			if c.seq() < last {
				behind++
			}
		}
		state = fmt.Sprintf("%d stored (stable: %t), %d acknowledged not stored yet, %d clients behind seq %d", count, stable, missing, behind, last)
		return stable && missing == 0 && behind == 0
	})
	if !quiet {
		sc.t.Logf("not quiet at the deadline: %s", state)
	}
	for _, c := range sc.clients {
		c.close()
	}
	rows := sc.stored()
	var views []View
	for _, c := range sc.clients {
		views = append(views, c.snapshot())
	}
	rep := Check(sc.rec.Sends(), rows, views)
	sc.t.Logf("%d clients: %s", len(sc.clients), rep.Counts)
	for _, f := range rep.Findings {
		sc.t.Error(f)
	}
	if rep.Counts.Acked == 0 {
		sc.t.Error("nothing was acknowledged")
	}
	return rows
}

// poll calls cond every interval until it returns true (true) or timeout
// passes (false).
func poll(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// storedKeys returns the key (chat, sender, client message id) of every
// stored message of the chat, how many there are and the newest sequence.
func (sc *scenario) storedKeys() (keys map[string]bool, count, last int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, sc.s.dbURL)
	if err != nil {
		return nil, 0, 0, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT sender_id, client_msg_id, seq FROM messages WHERE chat_id = $1", generalChat)
	if err != nil {
		return nil, 0, 0, err
	}
	keys = map[string]bool{}
	var sender, seq int64
	var id string
	_, err = pgx.ForEachRow(rows, []any{&sender, &id, &seq}, func() error {
		keys[sendKey(generalChat, sender, id)] = true
		count++
		last = max(last, seq)
		return nil
	})
	return keys, count, last, err
}

// stored reads every stored message of the chat from PostgreSQL.
func (sc *scenario) stored() []Row {
	sc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, sc.s.dbURL)
	if err != nil {
		sc.t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT chat_id, seq, sender_id, client_msg_id, text FROM messages WHERE chat_id = $1 ORDER BY seq", generalChat)
	if err != nil {
		sc.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Row, error) {
		var x Row
		err := r.Scan(&x.ChatID, &x.Seq, &x.SenderID, &x.ClientMsgID, &x.Text)
		return x, err
	})
	if err != nil {
		sc.t.Fatal(err)
	}
	return out
}

// onGateway returns the clients whose current connection is to gateway i.
func (sc *scenario) onGateway(i int) []*chatClient {
	var out []*chatClient
	for _, c := range sc.clients {
		c.mu.Lock()
		if c.gateway == i {
			out = append(out, c)
		}
		c.mu.Unlock()
	}
	return out
}

// restartIfStopped starts a shared server again when a failed test left it
// stopped, so that the next tests run.
func restartIfStopped(t *testing.T, name string, running func() bool, start func(context.Context) error) {
	if running() {
		return
	}
	if err := start(context.Background()); err != nil {
		t.Errorf("start %s again: %v", name, err)
	}
}

// TestFaultConcurrentSendersOneOrder: 20 senders in one chat, spread over
// both gateways (with two chat and two history replicas): every member sees
// the same contiguous order, and each sender's messages keep their order.
func TestFaultConcurrentSendersOneOrder(t *testing.T) {
	sc := newScenario(t, stackOptions{}, 20, 20*time.Millisecond)
	sc.waitAcked(600, "from 20 concurrent senders")
	sc.finish()
}

// TestFaultGatewayKill: kill -9 one gateway while 20 clients send; its
// clients reconnect to the other one, resume and retry what was not
// acknowledged.
func TestFaultGatewayKill(t *testing.T) {
	sc := newScenario(t, stackOptions{}, 20, 50*time.Millisecond)
	sc.waitAcked(100, "before the kill")
	victims := sc.onGateway(0)
	if len(victims) == 0 {
		t.Fatal("no client on gateway 1")
	}
	sc.s.kill("gateway-1")
	testenv.Eventually(t, 30*time.Second, func() bool {
		for _, c := range victims {
			c.mu.Lock()
			moved := c.gateway == 1 && c.connects >= 2
			c.mu.Unlock()
			if !moved {
				return false
			}
		}
		return true
	}, "the %d clients of the killed gateway reconnected to the other", len(victims))
	sc.waitAcked(100, "after the kill")
	sc.finish()
}

// TestFaultHistoryWriterKill: kill -9 the active history writer (the one
// holding the writers' lock) while the stream holds messages it has not
// stored, then start it again.
//
// The writers collect batches for 100 ms here, so that at nearly every
// moment the stream holds messages beyond the stored position. The test
// kills the active writer as soon as it sees some, and reads them from the
// stream right after the kill (the other writer takes over only once the
// lock expires, HISTORY_LEADER_TTL 1 s); should the writer have stored
// them all in between, it starts the writer again and tries anew (three
// times at most, then it says so). At the end every message unstored at
// the kill must be stored, and in stream order with nothing else among
// them: the chat's sequence of each is its stream sequence plus one same
// offset (every message of the test goes to one chat, and the stream keeps
// a message once).
func TestFaultHistoryWriterKill(t *testing.T) {
	sc := newScenario(t, stackOptions{env: map[string]string{"HISTORY_BATCH_WAIT": "100ms"}}, 8, 10*time.Millisecond)
	writers := []string{"history-1", "history-2"}
	var killed string
	var held unstored
	for round := 1; ; round++ {
		active := sc.activeWriter(writers)
		testenv.Eventually(t, 30*time.Second, func() bool {
			u, err := sc.s.unstoredRange(false)
			return err == nil && u.last > u.pos
		}, "messages in the stream not stored yet by %s", active)
		sc.s.kill(active) // right after the check
		var err error
		if held, err = sc.s.unstoredRange(true); err != nil {
			t.Fatal(err)
		}
		t.Logf("at the kill: stored position %d, stream up to %d: %d messages not stored (%d sequences gone)",
			held.pos, held.last, len(held.msgs), held.gone)
		if held.gone > 0 {
			t.Errorf("%d stream messages beyond the stored position were gone from the stream", held.gone)
		}
		if len(held.msgs) > 0 || round == 3 {
			killed = active
			break
		}
		t.Logf("%s had stored everything when killed (try %d); starting it again", active, round)
		sc.s.start(active)
	}
	sc.waitAcked(100, "after the writer was killed")
	sc.s.start(killed)
	sc.waitAcked(100, "after the writer restarted")
	rows := sc.finish()

	if len(held.msgs) == 0 {
		t.Logf("the stream held nothing unstored at any of 3 kills: the takeover mid-stream was not exercised this run")
		return
	}
	for _, name := range writers {
		t.Logf("%s: position moved under it %v times (failed batches)", name, sc.s.metric(name, "history_writer_failed_batches_total"))
	}
	seqOf := map[string]int64{}
	for _, r := range rows {
		seqOf[sendKey(r.ChatID, r.SenderID, r.ClientMsgID)] = r.Seq
	}
	var offset int64
	bad := 0
	for i, m := range held.msgs {
		seq, ok := seqOf[m.key]
		if !ok {
			t.Errorf("%s (stream sequence %d): unstored at the kill, never stored", m.key, m.seq)
			continue
		}
		if i == 0 {
			offset = seq - int64(m.seq)
		}
		if seq-int64(m.seq) != offset {
			bad++
			if bad <= 10 {
				t.Errorf("%s: stream sequence %d stored at seq %d, want %d: the messages unstored at the kill were not stored in stream order",
					m.key, m.seq, seq, int64(m.seq)+offset)
			}
		}
	}
	first, last := held.msgs[0], held.msgs[len(held.msgs)-1]
	t.Logf("the messages unstored at the kill, stream sequences %d to %d, were stored at seqs %d to %d",
		first.seq, last.seq, seqOf[first.key], seqOf[last.key])
}

// activeWriter waits until one of the history writers stores 20 more
// messages than now, and returns it.
func (sc *scenario) activeWriter(names []string) string {
	sc.t.Helper()
	const stored = "history_writer_messages_stored_total"
	base := map[string]float64{}
	for _, n := range names {
		base[n] = sc.s.metric(n, stored)
	}
	var active string
	testenv.Eventually(sc.t, 30*time.Second, func() bool {
		for _, n := range names {
			if sc.s.metric(n, stored) >= base[n]+20 {
				active = n
				return true
			}
		}
		return false
	}, "a history writer storing")
	return active
}

// TestFaultRedisRestart: restart Redis (an empty one: fanout
// subscriptions, presence and limits are gone) while clients send.
func TestFaultRedisRestart(t *testing.T) {
	sc := newScenario(t, stackOptions{}, 8, 20*time.Millisecond)
	sc.waitAcked(50, "before the restart")
	sc.waitAllOnline("before the restart")
	rd := sc.s.in.redis
	t.Cleanup(func() { restartIfStopped(t, "redis", rd.Running, rd.Start) })
	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Log("redis stopped")
	sc.waitAcked(30, "while redis is down")
	if err := rd.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Log("redis started again")
	sc.waitAcked(100, "after the restart")
	// The restarted Redis is empty: presence is back only because each
	// gateway wrote its users again, without a restart of its own.
	sc.waitAllOnline("after the restart")
	sc.finish()
}

// waitAllOnline waits until a view of general through each gateway lists
// every client's user as online.
func (sc *scenario) waitAllOnline(when string) {
	sc.t.Helper()
	want := make([]int64, 0, len(sc.clients))
	for _, c := range sc.clients {
		want = append(want, c.u.id)
	}
	slices.Sort(want)
	for gw := range sc.s.gateways() {
		var got []int64
		var err error
		testenv.EventuallyDescribe(sc.t, 30*time.Second, func() bool {
			got, err = sc.onlineInGeneral(gw)
			return err == nil && slices.Equal(got, want)
		}, func() string {
			return fmt.Sprintf("presence through gateway %d %s: online %v (error %v), want %v", gw, when, got, err, want)
		})
	}
}

// onlineInGeneral opens a connection to gateway gw as the first client's
// user (online already, so the connection changes nothing), views general
// and returns the ids of the online users the presence event lists.
func (sc *scenario) onlineInGeneral(gw int) ([]int64, error) {
	u := "ws" + strings.TrimPrefix(sc.s.gateways()[gw], "http") + "/ws"
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, _, err := d.Dial(u, http.Header{"Authorization": {"Bearer " + sc.clients[0].u.token}})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := conn.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"type":"view","chat_id":%d}`, generalChat)); err != nil {
		return nil, err
	}
	for {
		_, frame, err := conn.ReadMessage()
		if err != nil {
			return nil, err
		}
		events, err := protocol.SplitFrame(frame)
		if err != nil {
			return nil, err
		}
		for _, raw := range events {
			var p protocol.Presence
			if json.Unmarshal(raw, &p) != nil || p.Type != protocol.TypePresence {
				continue
			}
			ids := make([]int64, 0, len(p.Online))
			for _, m := range p.Online {
				ids = append(ids, m.ID)
			}
			slices.Sort(ids)
			return ids, nil
		}
	}
}

// TestFaultNATSRestart: kill -9 nats-server and start it again on the same
// port and JetStream store while clients send.
func TestFaultNATSRestart(t *testing.T) {
	sc := newScenario(t, stackOptions{}, 8, 20*time.Millisecond)
	sc.waitAcked(50, "before the restart")
	nats := sc.s.in.nats
	t.Cleanup(func() { restartIfStopped(t, "nats-server", nats.Running, nats.Start) })
	nats.Kill()
	t.Log("nats-server killed")
	refused := sc.rec.Refusals()
	testenv.Eventually(t, 30*time.Second, func() bool { return sc.rec.Refusals() >= refused+5 },
		"sends refused while nats is down")
	if err := nats.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Log("nats-server started again")
	sc.waitAcked(100, "after the restart")
	sc.finish()
}

// TestFaultPostgresStop: stop PostgreSQL (immediate shutdown) for 5
// seconds while clients send: every send is acknowledged or refused with a
// code, and every acknowledged one is stored once PostgreSQL is back.
func TestFaultPostgresStop(t *testing.T) {
	sc := newScenario(t, stackOptions{}, 8, 20*time.Millisecond)
	sc.waitAcked(50, "before the stop")
	pg := sc.s.in.pg
	t.Cleanup(func() { restartIfStopped(t, "postgres", pg.Running, pg.Start) })
	if err := pg.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	t.Log("postgres stopped")
	during := sc.rec.Attempts()
	testenv.Eventually(t, 30*time.Second, func() bool {
		return time.Since(stopped) >= 5*time.Second && sc.rec.Attempts() > during
	}, "postgres down for 5 s while clients send")
	if err := pg.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Log("postgres started again")
	sc.waitAcked(100, "after postgres is back")
	sc.finish()
}

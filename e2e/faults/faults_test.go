package faults

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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
// last message answered, every client at the chat's last stored sequence),
// then checks what was stored and seen, failing on any finding.
func (sc *scenario) finish() {
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
	// Quiet: every acknowledged send is stored, and every client reached
	// the chat's stored end. It is not required here (the checker reports
	// what is missing), so the deadline only bounds the wait.
	acked := sc.rec.Count(Acked)
	deadline := time.Now().Add(60 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	for time.Now().Before(deadline) {
		count, last := sc.storedEnd()
		behind := 0
		for _, c := range sc.clients {
			if c.seq() < last {
				behind++
			}
		}
		if count >= int64(acked) && behind == 0 {
			break
		}
		<-tick.C
	}
	tick.Stop()
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
}

// storedEnd returns how many messages the chat has stored and its newest
// sequence (zeros when PostgreSQL does not answer).
func (sc *scenario) storedEnd() (count, last int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, sc.s.dbURL)
	if err != nil {
		return 0, 0
	}
	defer conn.Close(ctx)
	_ = conn.QueryRow(ctx, "SELECT count(*), coalesce(max(seq), 0) FROM messages WHERE chat_id = $1", generalChat).Scan(&count, &last)
	return count, last
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

// TestFaultHistoryWriterKill: kill -9 the active history writer while it
// stores a burst, then start it again.
//
// The writers fetch with a longer batch wait here (100 ms), so that at
// nearly every moment the active one holds delivered, unacknowledged
// messages; the kill comes when it does.
func TestFaultHistoryWriterKill(t *testing.T) {
	sc := newScenario(t, stackOptions{env: map[string]string{"HISTORY_BATCH_WAIT": "100ms"}}, 8, 10*time.Millisecond)
	const stored = "history_writer_messages_stored_total"
	var active string
	testenv.Eventually(t, 30*time.Second, func() bool {
		for _, name := range []string{"history-1", "history-2"} {
			if sc.s.metric(name, stored) >= 50 {
				active = name
				return true
			}
		}
		return false
	}, "a history writer stored 50 messages")
	before := sc.s.metric(active, stored)
	testenv.Eventually(t, 30*time.Second, func() bool { return sc.s.metric(active, stored) >= before+20 },
		"%s storing the burst", active)
	testenv.Eventually(t, 30*time.Second, func() bool {
		n, err := sc.s.unacked()
		return err == nil && n > 0
	}, "%s holding a batch", active)
	sc.s.kill(active)
	n, err := sc.s.unacked()
	t.Logf("%d messages delivered to the killed writer and not acknowledged (err %v)", n, err)
	sc.waitAcked(100, "after the writer was killed")
	sc.s.start(active)
	sc.waitAcked(100, "after the writer restarted")
	sc.finish()
}

// TestFaultRedisRestart: restart Redis (an empty one: fanout
// subscriptions, presence and limits are gone) while clients send.
func TestFaultRedisRestart(t *testing.T) {
	sc := newScenario(t, stackOptions{}, 8, 20*time.Millisecond)
	sc.waitAcked(50, "before the restart")
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
	sc.finish()
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

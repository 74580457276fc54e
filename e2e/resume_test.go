package e2e

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

// seqsOf returns the sequence numbers of the messages of chat a connection
// received, in the order received.
func (w *wsConn) seqsOf(chat int64) []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int64
	for _, e := range w.events {
		if e["type"] == protocol.TypeMessage && e["chat_id"] == float64(chat) {
			out = append(out, int64(e["seq"].(float64)))
		}
	}
	return out
}

func seqRange(from, to int64) []int64 {
	var out []int64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

// TestResume: a client that reconnects, to the other replica, with the last
// sequence it saw gets exactly the messages it missed, in order, then the
// live ones, with no gap and no duplicate at the seam, also while messages
// keep coming during the reconnect.
func TestResume(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	bob := signUp(t, s.gateways[1], "bob")
	a := alice.dial()
	send := func(i int) {
		t.Helper()
		id := fmt.Sprintf("m-%d", i)
		a.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: id, ChatID: generalChat, ClientMsgID: id, Text: fmt.Sprint("message ", i)})
		if got := a.waitEvent(isAnswerTo(id), "answer to "+id); got["type"] != protocol.TypeAck {
			t.Fatalf("send %s answered %v", id, got)
		}
	}

	b := bob.dial()
	for i := 1; i <= 3; i++ {
		send(i)
	}
	b.waitEvent(isMessage("m-3"), "m-3 at bob")
	if err := b.conn.Close(); err != nil {
		t.Fatal(err)
	}
	// Bob is away (a tunnel) while three more are sent.
	for i := 4; i <= 6; i++ {
		send(i)
	}

	bob.base = s.gateways[0]
	b2 := bob.dialQuery("resume=1:3")
	resumed := b2.waitEvent(func(e map[string]any) bool { return e["type"] == protocol.TypeResumed }, "resumed")
	// The replay holds what history had stored (a message acknowledged a
	// moment ago may still be on its way to PostgreSQL: it then comes
	// live, right after).
	if pos, _ := resumed["positions"].(map[string]any); pos["1"] == nil || pos["1"].(float64) < 3 || pos["1"].(float64) > 6 {
		t.Errorf("resumed %v, want chat 1 between 3 and 6", resumed)
	}
	b2.waitEvent(isMessage("m-6"), "m-6 at bob")
	if got := b2.seqsOf(generalChat); !slices.Equal(got, seqRange(4, 6)) {
		t.Errorf("replayed %v, want 4..6", got)
	}
	send(7)
	b2.waitEvent(isMessage("m-7"), "live m-7")
	if got := b2.seqsOf(generalChat); !slices.Equal(got, seqRange(4, 7)) {
		t.Errorf("after a live message: %v, want 4..7", got)
	}

	// Again, with messages arriving while the client reconnects.
	if err := b2.conn.Close(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 8; i <= 27; i++ {
			send(i)
		}
	})
	bob.base = s.gateways[1]
	b3 := bob.dialQuery("resume=1:7")
	wg.Wait()
	testenv.Eventually(t, 20*time.Second, func() bool { return len(b3.seqsOf(generalChat)) >= 20 }, "bob has 20 messages")
	if got := b3.seqsOf(generalChat); !slices.Equal(got, seqRange(8, 27)) {
		t.Errorf("resume during sends: %v, want 8..27 exactly once each, in order", got)
	}

	// A bad resume parameter is refused before the upgrade.
	if _, resp, err := websocketDial("ws"+s.gateways[0][len("http"):]+"/ws?resume=x", bobHeader(bob)); err == nil || resp == nil || resp.StatusCode != 400 {
		t.Errorf("bad resume: err %v, response %v; want 400", err, resp)
	}
}

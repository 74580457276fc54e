package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

// TestFaultSlowConsumer: a client that stops reading its socket is
// disconnected with close code 4001 (resume), which it reads once it reads
// again; it then resumes without loss, and another client on the same
// gateway kept receiving meanwhile.
func TestFaultSlowConsumer(t *testing.T) {
	s := startStack(t, stackOptions{env: map[string]string{"GATEWAY_SEND_QUEUE": "32"}})
	gws := s.gateways()
	users := signUpAll(t, gws[0], testenv.UniqueName("s")+"-", 4)
	stalledUser, readerUser, senders := users[0], users[1], users[2:]
	rec := NewRecorder()

	// The stalled client: a socket with a small receive buffer, so that
	// the gateway's writes block soon after it stops reading.
	stalled := dialSmallBuffer(t, gws[0], stalledUser.token)
	defer stalled.Close()
	// The replay (empty now) is part of the stalled client's view.
	replayed, err := readUntil(stalled, protocol.TypeResumed)
	if err != nil {
		t.Fatalf("stalled client before it stops reading: %v", err)
	}
	// From here it reads nothing until the gateway gave up on it.

	reader := newChatClient(t, readerUser, generalChat, gws[:1], 0, rec, 0)
	reader.stopSending()
	reader.start()
	defer reader.close()
	var clients []*chatClient
	for i, u := range senders {
		c := newChatClient(t, u, generalChat, gws, i, rec, time.Millisecond)
		c.pad = 3000
		c.start()
		defer c.close()
		clients = append(clients, c)
	}

	testenv.EventuallyDescribe(t, 60*time.Second, func() bool { return s.metric("gateway-1", "gateway_slow_consumer_disconnects_total") >= 1 },
		func() string {
			return fmt.Sprintf("gateway 1 disconnects the client that stopped reading (%d sends acknowledged)", rec.Count(Acked))
		})
	// The other client on that gateway keeps receiving.
	at := reader.seq()
	testenv.Eventually(t, 30*time.Second, func() bool { return reader.seq() >= at+20 },
		"the reading client receives after the stalled one was disconnected (at %d)", at)

	// The stalled client reads again: what was buffered, then the close.
	rows, err := readUntil(stalled, "")
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != protocol.CloseSlowConsumer {
		t.Fatalf("the stalled client's connection ended with %v, want close code %d", err, protocol.CloseSlowConsumer)
	}
	t.Logf("the stalled client read %d buffered messages, then close %d %q", len(rows), ce.Code, ce.Text)

	// It resumes from the last sequence it has, on the same gateway.
	resumed := newChatClient(t, stalledUser, generalChat, gws[:1], 0, rec, 0)
	resumed.stopSending()
	for _, r := range append(replayed, rows...) {
		resumed.view = append(resumed.view, r)
		resumed.lastSeq = max(resumed.lastSeq, r.Seq)
	}
	resumed.start()
	defer resumed.close()

	for _, c := range clients {
		c.stopSending()
	}
	sc := &scenario{t: t, s: s, rec: rec, clients: append([]*chatClient{reader, resumed}, clients...)}
	sc.finish()
}

// dialSmallBuffer opens a websocket to gateway base (resuming chat
// "general" from 0) on a socket with a 4 KiB receive buffer.
func dialSmallBuffer(t *testing.T, base, token string) *websocket.Conn {
	t.Helper()
	nd := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, NetDialContext: nd.DialContext, ReadBufferSize: 1024}
	u := "ws" + strings.TrimPrefix(base, "http") + fmt.Sprintf("/ws?resume=%d:0", generalChat)
	conn, _, err := d.DialContext(context.Background(), u, http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	return conn
}

// readUntil reads frames, collecting the messages of chat "general", until
// an event of type stop arrives (stop "": until the connection ends) and
// returns them with the read error that ended it.
func readUntil(conn *websocket.Conn, stop string) ([]Row, error) {
	var rows []Row
	_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		_, frame, err := conn.ReadMessage()
		if err != nil {
			return rows, err
		}
		events, err := protocol.SplitFrame(frame)
		if err != nil {
			continue
		}
		for _, raw := range events {
			var m protocol.Message
			if json.Unmarshal(raw, &m) != nil {
				continue
			}
			if m.Type == protocol.TypeMessage && m.ChatID == generalChat {
				rows = append(rows, Row{ChatID: m.ChatID, Seq: m.Seq, SenderID: m.SenderID, ClientMsgID: m.ClientMsgID, Text: m.Text})
			}
			if stop != "" && m.Type == stop {
				return rows, nil
			}
		}
	}
}

package ws

import (
	"context"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
)

// Every event that costs the services a request goes through the
// connection's bucket; pings and typing (limited on their own) do not.
func TestHandleChargesTheBucket(t *testing.T) {
	t.Parallel()
	s, _ := newLiveServer(t, nil)
	c := liveConn(s, busapi.User{ID: 7, Username: "alice"}, 1, teamChat)
	c.limiter = rate.NewLimiter(rate.Every(time.Hour), 0) // nothing allowed
	limited := []string{
		`{"type":"send","id":"send","chat_id":1,"client_msg_id":"m1","text":"hi"}`,
		`{"type":"edit","id":"edit","chat_id":1,"seq":1,"client_msg_id":"e1","text":"hi"}`,
		`{"type":"delete","id":"delete","chat_id":1,"seq":1,"client_msg_id":"d1"}`,
		`{"type":"read","id":"read","chat_id":1,"seq":1}`,
		`{"type":"view","id":"view","chat_id":1}`,
	}
	for _, raw := range limited {
		c.handle(context.Background(), []byte(raw))
	}
	c.handle(context.Background(), []byte(`{"type":"ping","id":"ping"}`))
	got := events(t, c)
	if len(got) != len(limited)+1 {
		t.Fatalf("%d answers, want %d: %v", len(got), len(limited)+1, got)
	}
	for i, typ := range []string{"send", "edit", "delete", "read", "view"} {
		if e := got[i]; e["type"] != protocol.TypeError || e["code"] != string(protocol.CodeRateLimited) || e["id"] != typ {
			t.Errorf("answer to %s = %v, want rate_limited", typ, e)
		}
	}
	if e := got[len(limited)]; e["type"] != protocol.TypePong {
		t.Errorf("answer to ping = %v, want pong", e)
	}
	if c.isClosed() {
		t.Errorf("closed after %d refusals, below the %d that close", len(limited), s.cfg.SendRefusals)
	}
}

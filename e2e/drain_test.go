package e2e

import (
	"errors"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

// TestGatewayDrain: a gateway told to shut down closes its websockets with
// the "reconnect" close code; its clients reconnect to the other replica and
// go on chatting.
func TestGatewayDrain(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	bob := signUp(t, s.gateways[1], "bob")
	a := alice.dial()
	b := bob.dial()

	s.stopGateway[0]()
	var ce *websocket.CloseError
	testenv.Eventually(t, 20*time.Second, func() bool { return errors.As(a.closeErr(), &ce) }, "alice's connection closed")
	if ce.Code != protocol.CloseGoingAway || !protocol.CloseShouldReconnect(ce.Code) {
		t.Fatalf("close code = %d, want %d (reconnect)", ce.Code, protocol.CloseGoingAway)
	}
	select {
	case <-s.gatewayDone[0]:
	case <-time.After(30 * time.Second):
		t.Fatal("gateway 1 did not finish shutting down")
	}

	// Alice moves to gateway 2 with the same session.
	alice.base = s.gateways[1]
	a2 := alice.dial()
	a2.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "after", ChatID: generalChat, ClientMsgID: "after-drain", Text: "back"})
	if ack := a2.waitEvent(isAnswerTo("after"), "answer"); ack["type"] != protocol.TypeAck {
		t.Fatalf("send after reconnect answered %v", ack)
	}
	b.waitEvent(isMessage("after-drain"), "message at bob")
}

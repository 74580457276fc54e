package streampub_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/streampub"
	"github.com/communications/communications/libs/testenv"
)

// The stream is played by a subscriber that holds its acknowledgements:
// with one batch in flight a second publish waits in the queue until the
// first is acknowledged; with two it goes out at once.
func TestInFlight(t *testing.T) {
	t.Parallel()
	for _, inFlight := range []int{1, 2} {
		t.Run(fmt.Sprintf("in flight %d", inFlight), func(t *testing.T) {
			t.Parallel()
			nc := testenv.NATSConn(t)
			subj := testenv.UniqueName("streampub.")
			held := make(chan *nats.Msg, 4)
			if _, err := nc.Subscribe(subj, func(m *nats.Msg) { held <- m }); err != nil {
				t.Fatal(err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			pub, err := streampub.New(nc, streampub.Config{InFlight: inFlight, Timeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			ack := func(m *nats.Msg, seq int) {
				t.Helper()
				if err := m.Respond(fmt.Appendf(nil, `{"stream":"S","seq":%d}`, seq)); err != nil {
					t.Fatal(err)
				}
			}
			received := func(what string) *nats.Msg {
				t.Helper()
				select {
				case m := <-held:
					return m
				case <-time.After(10 * time.Second):
					t.Fatalf("%s never published", what)
					return nil
				}
			}
			done := make(chan error, 2)
			publish := func(data string) {
				go func() {
					msg := nats.NewMsg(subj)
					msg.Data = []byte(data)
					_, err := pub.Publish(context.Background(), msg)
					done <- err
				}()
			}

			publish("first")
			first := received("the first message")
			publish("second")
			if inFlight == 1 {
				testenv.Eventually(t, 10*time.Second, func() bool {
					n, busy := pub.Queued()
					return n == 1 && busy
				}, "the second message queued behind the first")
				select {
				case m := <-held:
					t.Fatalf("%q published while the first waits for its ack", m.Data)
				default:
				}
				ack(first, 1)
				ack(received("the second message"), 2)
			} else {
				second := received("the second message, while the first waits for its ack")
				ack(second, 2)
				ack(first, 1)
			}
			for range 2 {
				if err := <-done; err != nil {
					t.Errorf("publish: %v", err)
				}
			}
			if n, busy := pub.Queued(); n != 0 {
				t.Errorf("queue holds %d (busy %v) after both were acknowledged, want 0", n, busy)
			}
		})
	}
}

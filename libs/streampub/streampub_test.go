package streampub_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/streampub"
	"github.com/communications/communications/libs/testenv"
)

// heldStream returns a publisher with inFlight batches in flight to subj,
// where a subscriber plays the stream: it hands each message it gets to
// the test on held, which acknowledges it when it likes.
func heldStream(t *testing.T, inFlight int) (pub *streampub.Publisher, subj string, held chan *nats.Msg) {
	t.Helper()
	nc := testenv.NATSConn(t)
	subj = testenv.UniqueName("streampub.")
	held = make(chan *nats.Msg, 4)
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
	return pub, subj, held
}

// waitIdle waits until pub has nothing queued and nothing in flight.
func waitIdle(t *testing.T, pub *streampub.Publisher, why string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() bool {
		n, busy := pub.Queued()
		return n == 0 && !busy
	}, "the publisher idle (%s)", why)
}

// The stream is played by a subscriber that holds its acknowledgements:
// with one batch in flight a second publish waits in the queue until the
// first is acknowledged; with two it goes out at once.
func TestInFlight(t *testing.T) {
	t.Parallel()
	for _, inFlight := range []int{1, 2} {
		t.Run(fmt.Sprintf("in flight %d", inFlight), func(t *testing.T) {
			t.Parallel()
			pub, subj, held := heldStream(t, inFlight)
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
			waitIdle(t, pub, "after both were acknowledged")
		})
	}
}

// A message whose caller gives up while it waits in the queue is never
// sent: the caller retries it, and its next message cannot overtake it.
func TestGivenUpInQueueNotSent(t *testing.T) {
	t.Parallel()
	pub, subj, held := heldStream(t, 1)
	first := make(chan error, 1)
	go func() {
		_, err := pub.Publish(context.Background(), nats.NewMsg(subj))
		first <- err
	}()
	var firstMsg *nats.Msg
	select {
	case firstMsg = <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the first message never published")
	}
	ctx, cancel := context.WithCancel(context.Background())
	second := make(chan error, 1)
	go func() {
		_, err := pub.Publish(ctx, nats.NewMsg(subj))
		second <- err
	}()
	testenv.Eventually(t, 10*time.Second, func() bool { n, _ := pub.Queued(); return n == 1 }, "the second message queued")
	cancel()
	if err := <-second; !errors.Is(err, context.Canceled) {
		t.Fatalf("second publish: %v, want context.Canceled", err)
	}
	if n, _ := pub.Queued(); n != 0 {
		t.Fatalf("queue holds %d after its caller gave up, want 0", n)
	}
	if err := firstMsg.Respond([]byte(`{"stream":"S","seq":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatalf("first publish: %v", err)
	}
	// Had the second gone out, its acknowledgement (never given) would
	// keep the publisher busy.
	waitIdle(t, pub, "the second message not sent")
	if len(held) != 0 {
		t.Errorf("%d more messages reached the stream, want none", len(held))
	}
}

package busevents

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
)

// recorder counts the chat events applied to it.
type recorder struct {
	mu      sync.Mutex
	applied int
}

func (r *recorder) RevokeSession(string) int { return 0 }

func (r *recorder) ApplyChatEvent(context.Context, busapi.ChatEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied++
}

func (r *recorder) ApplyReadEvent(context.Context, busapi.ReadEvent) {}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}

type fixture struct {
	rec    *recorder
	events *Events
	logs   *testenv.LogBuffer
	pub    *nats.Conn
	subj   subjects.Subjects
}

func subscribe(t *testing.T) *fixture {
	t.Helper()
	srv := testenv.NATS(t)
	connect := func() *nats.Conn {
		nc, err := nats.Connect(srv.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{rec: &recorder{}, logs: &testenv.LogBuffer{}, pub: connect(), subj: subj}
	f.events, err = Subscribe(context.Background(), connect(), subj, f.rec, slog.New(slog.NewTextHandler(f.logs, nil)), noop.NewTracerProvider())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) publish(t *testing.T, data []byte) {
	t.Helper()
	if err := f.pub.Publish(f.subj.ChatEvents(), data); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) chatEvent(t *testing.T, id int64) {
	t.Helper()
	b, err := json.Marshal(busapi.ChatEvent{Kind: "updated", Chat: busapi.Chat{ID: id}})
	if err != nil {
		t.Fatal(err)
	}
	f.publish(t, b)
}

// A chat event that arrives once Wait has begun is dropped: Wait must not
// race with a new event's start (a WaitGroup's Add from zero during its
// Wait), and nothing is applied after the gateway stopped waiting.
func TestNoChatEventAfterWait(t *testing.T) {
	f := subscribe(t)
	f.chatEvent(t, 1)
	testenv.Eventually(t, 10*time.Second, func() bool { return f.rec.count() == 1 }, "the first chat event was not applied")
	f.events.Wait()
	f.chatEvent(t, 2)
	// One subscription's messages are handled in order: once the bad
	// event after it is logged, the handler is done with chat event 2.
	f.publish(t, []byte("not json"))
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(f.logs.String(), "bad event") }, "the bad event was not logged")
	// Had chat event 2 been started, this Wait would wait for it.
	f.events.Wait()
	if n := f.rec.count(); n != 1 {
		t.Fatalf("%d chat events applied, want 1 (the one before Wait)", n)
	}
}

// Wait while chat events keep arriving: under -race, a start that is not
// ordered with Wait is reported.
func TestWaitWhileEventsArrive(t *testing.T) {
	f := subscribe(t)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// At most 20,000: well under the subscription's pending limit
		// (65,536 messages), which would drop the marker published after.
		for i := int64(1); i <= 20_000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b, _ := json.Marshal(busapi.ChatEvent{Kind: "updated", Chat: busapi.Chat{ID: i}})
			if err := f.pub.Publish(f.subj.ChatEvents(), b); err != nil {
				return
			}
		}
	}()
	testenv.Eventually(t, 10*time.Second, func() bool { return f.rec.count() > 100 }, "chat events were not applied")
	f.events.Wait()
	n := f.rec.count()
	close(stop)
	<-done
	// Nothing is applied once Wait has returned.
	if err := f.pub.Flush(); err != nil {
		t.Fatal(err)
	}
	f.publish(t, []byte("not json"))
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(f.logs.String(), "bad event") }, "the bad event was not logged")
	if m := f.rec.count(); m != n {
		t.Fatalf("%d chat events applied after Wait returned", m-n)
	}
}

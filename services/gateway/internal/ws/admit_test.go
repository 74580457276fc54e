package ws

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/gateway/internal/hub"
)

func newAdmitServer(t *testing.T, cfg Config, up Upstream) *Server {
	t.Helper()
	s := NewServer(cfg, up, &fakeHub{joined: map[hub.Sink][]int64{}}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.Close)
	return s
}

// waitQueued waits until n set-ups wait for their turn.
func waitQueued(t *testing.T, s *Server, n int64) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() bool { return s.admission.queued.Load() == n }, "%d set-ups queued", n)
}

// waitParked waits until n goroutines started by the test named test are
// parked in the semaphore's wait, which they reach only after joining its
// FIFO list.
func waitParked(t *testing.T, test string, n int) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() bool {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		parked := 0
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, " [select") && strings.Contains(g, "semaphore.(*Weighted).Acquire") && strings.Contains(g, "ws."+test+".") {
				parked++
			}
		}
		return parked == n
	}, "%d set-ups parked in the semaphore", n)
}

// TestAdmitInOrder: with every slot taken, set-ups wait and are admitted
// first come, first served, as slots free up, never more at once than the
// bound.
func TestAdmitInOrder(t *testing.T) {
	t.Parallel()
	s := newAdmitServer(t, Config{SetupConcurrency: 2}, noUpstream{})
	ctx := context.Background()
	var held []func()
	for range 2 {
		release, err := s.Admit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, release)
	}
	const waiters = 6
	type admitted struct {
		i       int
		release func()
		err     error
	}
	in := make(chan admitted, waiters)
	var running, most atomic.Int64
	running.Store(2)
	for i := range waiters {
		go func() {
			release, err := s.Admit(ctx)
			if err != nil {
				in <- admitted{i: i, err: err}
				return
			}
			n := running.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			in <- admitted{i: i, release: release}
		}()
		// Each waits in the semaphore's queue before the next comes: the
		// queued count alone is raised before Acquire is entered, so the
		// next could still overtake it.
		waitQueued(t, s, int64(i+1))
		waitParked(t, "TestAdmitInOrder", i+1)
	}
	// Slots free up one at a time (the held ones first, then each admitted
	// waiter's): each lets exactly the longest waiting one in.
	var order []int
	for range waiters {
		release := held[0]
		held = held[1:]
		running.Add(-1)
		release()
		release() // a second call frees nothing more
		a := <-in
		if a.err != nil {
			t.Fatalf("waiter %d: %v", a.i, a.err)
		}
		order = append(order, a.i)
		held = append(held, a.release)
	}
	if diff := cmp.Diff([]int{0, 1, 2, 3, 4, 5}, order); diff != "" {
		t.Errorf("admission order (-want +got):\n%s", diff)
	}
	if m := most.Load(); m > 2 {
		t.Errorf("%d set-ups ran at once, want at most 2", m)
	}
	if n := s.admission.queued.Load(); n != 0 {
		t.Errorf("%d still queued", n)
	}
}

// TestAdmitBounded: past the queue's bound a set-up is refused at once;
// one that gives up while waiting leaves the queue; draining sends every
// waiter away and refuses new ones.
func TestAdmitBounded(t *testing.T) {
	t.Parallel()
	s := newAdmitServer(t, Config{SetupConcurrency: 1, SetupQueue: 2}, noUpstream{})
	ctx := context.Background()
	release, err := s.Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	gone, leave := context.WithCancel(ctx)
	errs := make(chan error, 2)
	go func() { _, err := s.Admit(gone); errs <- err }()
	waitQueued(t, s, 1)
	go func() { _, err := s.Admit(ctx); errs <- err }()
	waitQueued(t, s, 2)
	if _, err := s.Admit(ctx); !errors.Is(err, ErrBusy) {
		t.Errorf("admit past the bound: %v, want ErrBusy", err)
	}
	leave()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Errorf("waiter that went away: %v, want context.Canceled", err)
	}
	waitQueued(t, s, 1)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s.Drain(dctx, 1, time.Millisecond)
	if err := <-errs; !errors.Is(err, ErrDraining) {
		t.Errorf("waiter at drain: %v, want ErrDraining", err)
	}
	if _, err := s.Admit(ctx); !errors.Is(err, ErrDraining) {
		t.Errorf("admit while draining: %v, want ErrDraining", err)
	}
}

// countingUpstream counts session checks and answers them with err.
type countingUpstream struct {
	noUpstream
	checks atomic.Int64
	err    error
}

func (u *countingUpstream) Session(context.Context, string) (busapi.Session, error) {
	u.checks.Add(1)
	return busapi.Session{}, u.err
}

// TestSetupSessionCheck: a new connection's own session check stands on
// the upgrade's lookup only when that lookup says it is current; otherwise
// it asks auth, and a session auth refuses closes with 4100 right after the
// upgrade.
func TestSetupSessionCheck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		current    func() bool
		refused    bool
		wantChecks int64
		wantClose  int // 0: hello
	}{
		{name: "lookup current", current: func() bool { return true }, wantChecks: 0},
		{name: "lookup not current", current: func() bool { return false }, wantChecks: 1},
		{name: "no lookup given", wantChecks: 1},
		{name: "revoked after a cached lookup", current: func() bool { return false }, refused: true, wantChecks: 1, wantClose: protocol.CloseUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := &countingUpstream{}
			if tc.refused {
				up.err = busapi.Errorf(protocol.CodeUnauthorized, "no such session")
			}
			s := newAdmitServer(t, Config{}, up)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				s.Serve(w, r, busapi.Session{ID: "s", User: busapi.User{ID: 7, Username: "alice"}}, "token", tc.current)
			}))
			t.Cleanup(srv.Close)
			client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { client.Close() })
			_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, b, err := client.ReadMessage()
			if tc.wantClose != 0 {
				if ce, ok := errors.AsType[*websocket.CloseError](err); !ok || ce.Code != tc.wantClose {
					t.Errorf("first read: %q, %v; want close %d", b, err, tc.wantClose)
				}
			} else if err != nil || !strings.Contains(string(b), `"hello"`) {
				t.Errorf("first read: %q, %v; want hello", b, err)
			}
			if n := up.checks.Load(); n != tc.wantChecks {
				t.Errorf("auth asked %d times by the connection, want %d", n, tc.wantChecks)
			}
		})
	}
}

// TestSetupCurrentAfterRegistration: Serve asks whether the upgrade's
// lookup is current only once the connection is registered, so a
// revocation at that moment finds the connection and closes it (4100)
// instead of missing it while the lookup still counts as current.
func TestSetupCurrentAfterRegistration(t *testing.T) {
	t.Parallel()
	up := &countingUpstream{}
	s := newAdmitServer(t, Config{}, up)
	session := busapi.Session{ID: "s", User: busapi.User{ID: 7, Username: "alice"}}
	// current stands for a revocation event arriving at the moment the
	// lookup is judged, after which the lookup would count as current.
	current := func() bool {
		s.RevokeSession(session.ID)
		return true
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.Serve(w, r, session, "token", current)
	}))
	t.Cleanup(srv.Close)
	client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := client.ReadMessage()
	if ce, ok := errors.AsType[*websocket.CloseError](err); !ok || ce.Code != protocol.CloseUnauthorized {
		t.Errorf("first read: %q, %v; want close %d", b, err, protocol.CloseUnauthorized)
	}
}

// TestServeClientGone: a request whose client went away before its turn
// to be upgraded is dropped there: no upgrade, no answer, no session check.
func TestServeClientGone(t *testing.T) {
	t.Parallel()
	up := &countingUpstream{}
	s := newAdmitServer(t, Config{}, up)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/ws", nil)
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	w := httptest.NewRecorder()
	s.Serve(w, r, busapi.Session{ID: "s", User: busapi.User{ID: 7, Username: "alice"}}, "token", nil)
	if w.Code != http.StatusOK || w.Body.Len() != 0 || len(w.Header()) != 0 {
		t.Errorf("answered %d %v %q to a client that went away, want nothing", w.Code, w.Header(), w.Body)
	}
	if n := up.checks.Load(); n != 0 {
		t.Errorf("auth asked %d times for a client that went away", n)
	}
}

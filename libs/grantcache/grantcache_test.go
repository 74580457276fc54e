package grantcache

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/devstack"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
)

// errNotMember is the members' refusal.
var errNotMember = errors.New("not a member")

func isNotMember(err error) bool { return errors.Is(err, errNotMember) }

// members is a Checker over a set of memberships that counts its checks
// (started: begun, checks: answered) and keeps the deadline of the last one
// (zero: none). While gate is set, a check waits for a value from it first;
// while down is set, checks fail without an answer.
type members struct {
	mu       sync.Mutex
	in       map[membership]bool
	started  int
	checks   int
	deadline time.Time
	gate     chan struct{}
	down     bool
}

func (m *members) Check(ctx context.Context, userID, chatID int64) error {
	m.mu.Lock()
	gate := m.gate
	m.started++
	m.mu.Unlock()
	if gate != nil {
		<-gate
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checks++
	m.deadline, _ = ctx.Deadline()
	if m.down {
		return errors.New("the owner of memberships did not answer")
	}
	if !m.in[membership{userID, chatID}] {
		return errNotMember
	}
	return nil
}

func (m *members) setGate(gate chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gate = gate
}

func (m *members) setDown(down bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.down = down
}

func (m *members) set(userID, chatID int64, in bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.in[membership{userID, chatID}] = in
}

func (m *members) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.checks
}

// bus connects to a NATS server of the test's own, with subjects under a
// prefix of its own.
func bus(t *testing.T) (*nats.Conn, subjects.Subjects) {
	t.Helper()
	nc := testenv.NATSConn(t)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	return nc, subj
}

// newCache returns a cache of 100 grants in front of inner, subscribed on
// nc to subj's chat events.
func newCache(t *testing.T, nc *nats.Conn, subj subjects.Subjects, inner Checker, ttl, timeout time.Duration) *Cache {
	t.Helper()
	c := New(inner, Options{Size: 100, TTL: ttl, Timeout: timeout, IsRefusal: isNotMember})
	if err := c.Subscribe(nc, subj.ChatEvents()); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCache(t *testing.T) {
	t.Parallel()
	nc, subj := bus(t)
	inner := &members{in: map[membership]bool{}}
	a := newCache(t, nc, subj, inner, time.Hour, time.Second)
	ctx := context.Background()

	// A refusal is not remembered: a user added reads at once.
	if err := a.Check(ctx, 1, 10); !isNotMember(err) {
		t.Fatalf("non-member: %v, want not_a_member", err)
	}
	inner.set(1, 10, true)
	inner.set(2, 10, true)
	for range 3 {
		if err := a.Check(ctx, 1, 10); err != nil {
			t.Fatalf("member: %v", err)
		}
	}
	if err := a.Check(ctx, 2, 10); err != nil {
		t.Fatalf("member: %v", err)
	}
	if got := inner.count(); got != 3 {
		t.Errorf("chat service asked %d times, want 3 (refusal, then once per member)", got)
	}

	// The chat service removes user 1 and says so.
	inner.set(1, 10, false)
	data, err := json.Marshal(busapi.ChatEvent{Kind: "members", Chat: busapi.Chat{ID: 10}, Removed: []int64{1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subj.ChatEvents(), data); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		return isNotMember(a.Check(ctx, 1, 10))
	}, "removed member refused")
	before := inner.count()
	if err := a.Check(ctx, 2, 10); err != nil {
		t.Fatalf("remaining member: %v", err)
	}
	if got := inner.count(); got != before {
		t.Errorf("remaining member's access asked the chat service again (%d checks, want %d)", got, before)
	}
}

func TestCacheTTL(t *testing.T) {
	t.Parallel()
	nc, subj := bus(t)
	inner := &members{in: map[membership]bool{{1, 10}: true}}
	a := newCache(t, nc, subj, inner, 20*time.Millisecond, time.Second)
	ctx := context.Background()
	if err := a.Check(ctx, 1, 10); err != nil {
		t.Fatal(err)
	}
	// Removed without an event (one missed): refused once the ttl lapses.
	inner.set(1, 10, false)
	testenv.Eventually(t, 5*time.Second, func() bool {
		return isNotMember(a.Check(ctx, 1, 10))
	}, "removed member refused after the ttl")
}

// clock is a time that tests move.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestCacheRefreshesAhead(t *testing.T) {
	t.Parallel()
	nc, subj := bus(t)
	inner := &members{in: map[membership]bool{{1, 10}: true, {2, 10}: true}}
	// A ttl of 10 minutes on a clock the test moves (the cache's own
	// expiry, in real time, never comes within the test).
	const ttl = 10 * time.Minute
	a := newCache(t, nc, subj, inner, ttl, time.Second)
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a.now = clk.Now
	ctx := context.Background()
	canRead := func(user int64) error {
		t.Helper()
		err := a.Check(ctx, user, 10)
		a.refreshes.Wait()
		return err
	}

	if err := canRead(1); err != nil || inner.count() != 1 {
		t.Fatalf("first page: %v after %d checks, want a grant after 1", err, inner.count())
	}
	clk.advance(ttl/2 - time.Second)
	if err := canRead(1); err != nil || inner.count() != 1 {
		t.Fatalf("in the first half of the ttl: %v after %d checks, want the grant without a check", err, inner.count())
	}

	t.Run("late in the ttl a use checks again in the background", func(t *testing.T) {
		gate := make(chan struct{})
		inner.setGate(gate)
		clk.advance(ttl*2/5 + 2*time.Second) // nine tenths of the ttl passed
		trigger := clk.Now()
		done := make(chan error, 1)
		go func() { done <- a.Check(ctx, 1, 10) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("during the background check: %v, want the grant", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the page waited for the background check")
		}
		// One background check at a time.
		if err := a.Check(ctx, 1, 10); err != nil {
			t.Fatal(err)
		}
		// The check takes a minute: the new grant counts from its start.
		clk.advance(time.Minute)
		inner.setGate(nil)
		close(gate)
		a.refreshes.Wait()
		if got := inner.count(); got != 2 {
			t.Errorf("%d checks, want 2 (one background check)", got)
		}
		// The new grant serves past the first grant's ttl without a check
		// in the foreground, up to its own ttl from the start of its check.
		inner.setDown(true)
		defer inner.setDown(false)
		clk.advance(trigger.Add(ttl - time.Second).Sub(clk.Now()))
		if err := canRead(1); err != nil {
			t.Errorf("refreshed grant past the first one's ttl: %v", err)
		}
		clk.advance(time.Second)
		if err := canRead(1); err == nil {
			t.Error("refreshed grant a ttl after its check began, chat service away: granted, want the check's failure")
		}
	})

	t.Run("a failed background check is not tried again", func(t *testing.T) {
		if err := canRead(1); err != nil {
			t.Fatal(err)
		}
		// The chat service stops answering (fast): one background check
		// fails, and the grant serves to its ttl without another.
		inner.setDown(true)
		defer inner.setDown(false)
		clk.advance(ttl * 9 / 10)
		before := inner.count()
		for range 100 {
			if err := canRead(1); err != nil {
				t.Fatalf("within the ttl, chat service away: %v, want the grant", err)
			}
		}
		clk.advance(ttl/10 - time.Second)
		if err := canRead(1); err != nil {
			t.Fatalf("just within the ttl, chat service away: %v, want the grant", err)
		}
		if got := inner.count() - before; got != 1 {
			t.Errorf("%d checks for 101 pages late in the ttl, chat service away; want 1", got)
		}
		// A grant is never used beyond its ttl: then the page asks.
		clk.advance(time.Second)
		if err := canRead(1); err == nil {
			t.Fatal("past the ttl, chat service away: granted, want the check's failure")
		}
		if got := inner.count() - before; got != 2 {
			t.Errorf("%d checks, want 2 (the page past the ttl asked)", got)
		}
	})

	t.Run("a background check that refuses drops the grant", func(t *testing.T) {
		if err := canRead(2); err != nil {
			t.Fatal(err)
		}
		inner.set(2, 10, false)
		clk.advance(ttl * 9 / 10)
		if err := canRead(2); err != nil {
			t.Fatalf("before the background check's answer: %v, want the grant", err)
		}
		if err := canRead(2); !isNotMember(err) {
			t.Errorf("after a background check refused: %v, want not_a_member", err)
		}
	})

	t.Run("a background check that raced with a removal is not kept", func(t *testing.T) {
		inner.set(2, 10, true)
		if err := canRead(2); err != nil {
			t.Fatal(err)
		}
		clk.advance(ttl * 9 / 10)
		gate := make(chan struct{})
		inner.setGate(gate)
		if err := a.Check(ctx, 2, 10); err != nil {
			t.Fatal(err)
		}
		// The removal's event arrives before the check's answer, which
		// still saw user 2 in the chat.
		a.Removed(10, []int64{2})
		inner.setGate(nil)
		close(gate)
		a.refreshes.Wait()
		inner.set(2, 10, false)
		if err := canRead(2); !isNotMember(err) {
			t.Errorf("after the removal: %v, want not_a_member", err)
		}
	})
}

// TestCacheRefreshRacesPurge: a background check under way when an
// unreadable chat event purges the cache (it may have listed a removal) is
// not kept.
func TestCacheRefreshRacesPurge(t *testing.T) {
	t.Parallel()
	nc, subj := bus(t)
	inner := &members{in: map[membership]bool{{1, 10}: true}}
	const ttl = 10 * time.Minute
	a := newCache(t, nc, subj, inner, ttl, time.Second)
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a.now = clk.Now
	ctx := context.Background()
	if err := a.Check(ctx, 1, 10); err != nil {
		t.Fatal(err)
	}
	clk.advance(ttl * 9 / 10)
	gate := make(chan struct{})
	inner.setGate(gate)
	if err := a.Check(ctx, 1, 10); err != nil {
		t.Fatal(err)
	}
	// The unreadable event arrives before the check's answer, which still
	// saw user 1 in the chat.
	if err := nc.Publish(subj.ChatEvents(), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.granted.Len() == 0
	}, "cache purged")
	inner.setGate(nil)
	close(gate)
	a.refreshes.Wait()
	inner.set(1, 10, false)
	if err := a.Check(ctx, 1, 10); !isNotMember(err) {
		t.Errorf("after the purge: %v, want not_a_member", err)
	}
}

func TestRefreshAfterSpreads(t *testing.T) {
	t.Parallel()
	const ttl = 5 * time.Second
	lo, hi := ttl, time.Duration(0)
	for range 1000 {
		d := RefreshAfter(ttl)
		if d < ttl/2 || d >= ttl*9/10 {
			t.Fatalf("refresh after %v, want from %v to before %v", d, ttl/2, ttl*9/10)
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	if hi-lo < ttl/5 {
		t.Errorf("refresh points %v to %v: not spread", lo, hi)
	}
	if d := RefreshAfter(1); d != 0 {
		t.Errorf("refresh after %v for a ttl of 1ns, want 0", d)
	}
}

// TestCacheBoundsBackgroundChecks: when every background check is
// under way, a grant due for one serves on without, and is checked at a
// later use.
func TestCacheBoundsBackgroundChecks(t *testing.T) {
	t.Parallel()
	nc, subj := bus(t)
	inner := &members{in: map[membership]bool{{1, 10}: true, {2, 10}: true}}
	const ttl = 10 * time.Minute
	a := newCache(t, nc, subj, inner, ttl, time.Second)
	if cap(a.background) != maxBackgroundChecks {
		t.Fatalf("room for %d background checks, want %d", cap(a.background), maxBackgroundChecks)
	}
	a.background = make(chan struct{}, 1) // one at a time
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a.now = clk.Now
	ctx := context.Background()
	for _, u := range []int64{1, 2} {
		if err := a.Check(ctx, u, 10); err != nil {
			t.Fatal(err)
		}
	}
	clk.advance(ttl * 9 / 10)
	gate := make(chan struct{})
	inner.setGate(gate)
	for _, u := range []int64{1, 2} { // user 2's grant finds no room
		if err := a.Check(ctx, u, 10); err != nil {
			t.Fatalf("user %d late in the ttl: %v, want the grant", u, err)
		}
	}
	inner.setGate(nil)
	close(gate)
	a.refreshes.Wait()
	if got := inner.count(); got != 3 {
		t.Errorf("%d checks, want 3 (two grants, one background check)", got)
	}
	if err := a.Check(ctx, 2, 10); err != nil {
		t.Fatal(err)
	}
	a.refreshes.Wait()
	if got := inner.count(); got != 4 {
		t.Errorf("%d checks, want 4 (user 2's grant checked at its next use)", got)
	}
}

// TestCacheBackgroundTimeout: a background check is bounded by the
// cache's timeout (the service's request timeout), not by the page's
// context, which it outlives.
func TestCacheBackgroundTimeout(t *testing.T) {
	t.Parallel()
	nc, subj := bus(t)
	inner := &members{in: map[membership]bool{{1, 10}: true}}
	const ttl, timeout = 10 * time.Minute, 7 * time.Minute
	a := newCache(t, nc, subj, inner, ttl, timeout)
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a.now = clk.Now
	if err := a.Check(context.Background(), 1, 10); err != nil {
		t.Fatal(err)
	}
	clk.advance(ttl * 9 / 10)
	page, cancel := context.WithTimeout(context.Background(), time.Hour)
	before := time.Now()
	err := a.Check(page, 1, 10)
	cancel() // the page is answered
	a.refreshes.Wait()
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	inner.mu.Lock()
	deadline := inner.deadline
	inner.mu.Unlock()
	if inner.count() != 2 || deadline.Before(before.Add(timeout)) || deadline.After(after.Add(timeout)) {
		t.Errorf("background check (%d checks) had deadline %v, want the cache's timeout of %v from its start (within %v to %v)",
			inner.count(), deadline, timeout, before.Add(timeout), after.Add(timeout))
	}
}

// TestCacheForegroundCheckOvertakenByRemoval: a check that began while the
// user was in the chat and answers after the removal's event is passed on
// (it was true when asked) but not kept.
func TestCacheForegroundCheckOvertakenByRemoval(t *testing.T) {
	t.Parallel()
	inner := &members{in: map[membership]bool{{1, 10}: true}}
	a := New(inner, Options{Size: 100, TTL: time.Hour, Timeout: time.Second, IsRefusal: isNotMember})
	ctx := context.Background()
	gate := make(chan struct{})
	inner.setGate(gate)
	done := make(chan error, 1)
	go func() { done <- a.Check(ctx, 1, 10) }()
	testenv.Eventually(t, 5*time.Second, func() bool {
		inner.mu.Lock()
		defer inner.mu.Unlock()
		return inner.started == 1
	}, "check under way")
	// The removal's event arrives; the check, which read the membership
	// before it, answers after.
	a.Removed(10, []int64{1})
	inner.setGate(nil)
	close(gate)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the check begun before the removal: %v, want its grant", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the check did not answer after its gate opened")
	}
	if n := a.Len(); n != 0 {
		t.Fatalf("%d grants kept after a check overtaken by a removal, want 0", n)
	}
	inner.set(1, 10, false)
	if err := a.Check(ctx, 1, 10); !isNotMember(err) {
		t.Errorf("after the removal: %v, want the refusal", err)
	}
}

// TestCacheForgetsAcrossAReconnect: chat events sent while the connection
// was away are lost, so every grant is dropped when it loses its server,
// and the grants given meanwhile are dropped when it is back.
func TestCacheForgetsAcrossAReconnect(t *testing.T) {
	t.Parallel()
	// A port reserved for this process (devstack.FreePort), so that no
	// other connection takes it while the server is away.
	port, err := devstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ns := startNATS(t, port)
	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	inner := &members{in: map[membership]bool{{1, 10}: true}}
	a := newCache(t, nc, subj, inner, time.Hour, time.Second)
	ctx := context.Background()
	if err := a.Check(ctx, 1, 10); err != nil || a.Len() != 1 {
		t.Fatalf("first check: %v with %d grants, want a grant", err, a.Len())
	}

	ns.Shutdown()
	ns.WaitForShutdown()
	testenv.Eventually(t, 10*time.Second, func() bool { return a.Len() == 0 }, "grants dropped when the server went away")
	// While away, the owner (PostgreSQL, for the chat service) still
	// answers: a grant is given and kept.
	if err := a.Check(ctx, 1, 10); err != nil || a.Len() != 1 {
		t.Fatalf("check while away: %v with %d grants, want a grant", err, a.Len())
	}

	startNATS(t, port)
	testenv.Eventually(t, 10*time.Second, func() bool { return nc.IsConnected() && a.Len() == 0 },
		"grants given while away dropped once connected again")
}

// startNATS starts a plain nats-server on port until the test ends.
func startNATS(t *testing.T, port int) *natsserver.Server {
	t.Helper()
	s, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	return s
}

package presence

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// short lease times keep the tests quick; they hold the same invariants.
const (
	testTTL     = time.Second
	testRefresh = 200 * time.Millisecond
	testSweep   = 200 * time.Millisecond
)

// recorder collects the changes one gateway receives.
type recorder struct {
	mu      sync.Mutex
	changes []Change
	rebuilt int
}

func (r *recorder) add(c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

func (r *recorder) onRebuilt() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rebuilt++
}

func (r *recorder) got() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.changes)
}

func (r *recorder) rebuilds() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rebuilt
}

// waitChanges waits until the recorder holds exactly want (in order).
func (r *recorder) waitChanges(t *testing.T, want []Change) {
	t.Helper()
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool { return cmp.Equal(want, r.got()) },
		func() string { return fmt.Sprintf("changes (-want +got):\n%s", cmp.Diff(want, r.got())) })
}

type gateway struct {
	*Tracker
	rec  *recorder
	stop context.CancelFunc
	done chan struct{}
}

func redisClient(t *testing.T) (*redis.Client, string) {
	t.Helper()
	url, prefix := testenv.Redis(t)
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	return rdb, prefix
}

// startGateway runs a tracker under prefix until the test ends (or stop).
func startGateway(t *testing.T, rdb *redis.Client, prefix, id string) *gateway {
	t.Helper()
	tr, err := New(rdb, Config{Prefix: prefix, GatewayID: id, TTL: testTTL, Refresh: testRefresh, Sweep: testSweep},
		telemetry.NewLogger(io.Discard, 0))
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{Tracker: tr, rec: &recorder{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	g.stop = cancel
	ready := make(chan struct{})
	go func() {
		defer close(g.done)
		if err := tr.Run(ctx, g.rec.add, g.rec.onRebuilt, ready); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-g.done
	})
	select {
	case <-ready:
	case <-g.done:
		t.Fatal("tracker stopped before it was ready")
	case <-time.After(10 * time.Second):
		t.Fatal("tracker not ready")
	}
	return g
}

func online(t *testing.T, g *gateway, ids ...int64) []protocol.Member {
	t.Helper()
	var got []protocol.Member
	var err error
	if len(ids) == 0 {
		got, err = g.OnlineAll(context.Background())
	} else {
		got, err = g.Online(context.Background(), ids)
	}
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func waitOnline(t *testing.T, g *gateway, want []protocol.Member, ids ...int64) {
	t.Helper()
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool { return cmp.Equal(want, online(t, g, ids...)) },
		func() string {
			return fmt.Sprintf("online %v (-want +got):\n%s", ids, cmp.Diff(want, online(t, g, ids...)))
		})
}

var (
	alice = protocol.Member{ID: 1, Username: "alice"}
	bob   = protocol.Member{ID: 2, Username: `bob "the builder"`} // a name that needs JSON escaping
)

func on(m protocol.Member) Change  { return Change{UserID: m.ID, Username: m.Username, Online: true} }
func off(m protocol.Member) Change { return Change{UserID: m.ID, Username: m.Username, Online: false} }

// TestOnlineAcrossGateways: a user is online while any gateway has a
// connection of theirs; only the first connection and the last close are
// announced, to every gateway.
func TestOnlineAcrossGateways(t *testing.T) {
	t.Parallel()
	rdb, prefix := redisClient(t)
	g1 := startGateway(t, rdb, prefix, "g1")
	g2 := startGateway(t, rdb, prefix, "g2")

	g1.Connect(alice.ID, alice.Username)
	g1.rec.waitChanges(t, []Change{on(alice)})
	g2.rec.waitChanges(t, []Change{on(alice)})
	g1.Connect(alice.ID, alice.Username) // a second tab
	g2.Connect(alice.ID, alice.Username) // and a phone on the other gateway
	g2.Connect(bob.ID, bob.Username)
	g1.rec.waitChanges(t, []Change{on(alice), on(bob)})
	waitOnline(t, g1, []protocol.Member{alice, bob})
	waitOnline(t, g2, []protocol.Member{alice}, alice.ID, 99)

	// Closing connections while another remains announces nothing.
	g1.Disconnect(alice.ID)
	g1.Disconnect(alice.ID)
	g2.Disconnect(bob.ID)
	g1.rec.waitChanges(t, []Change{on(alice), on(bob), off(bob)})
	waitOnline(t, g1, []protocol.Member{alice}, alice.ID, bob.ID)
	g2.Disconnect(alice.ID)
	g1.rec.waitChanges(t, []Change{on(alice), on(bob), off(bob), off(alice)})
	g2.rec.waitChanges(t, []Change{on(alice), on(bob), off(bob), off(alice)})
	waitOnline(t, g2, []protocol.Member{})
}

// TestRebuildAfterRedisLostState: when Redis loses every key (a restart
// without persistence, a flush), each gateway finds its lease gone at the
// next refresh and writes its state again; nothing restarts.
func TestRebuildAfterRedisLostState(t *testing.T) {
	t.Parallel()
	rdb, prefix := redisClient(t)
	g1 := startGateway(t, rdb, prefix, "g1")
	g2 := startGateway(t, rdb, prefix, "g2")
	g1.Connect(alice.ID, alice.Username)
	g2.Connect(bob.ID, bob.Username)
	waitOnline(t, g1, []protocol.Member{alice, bob})

	ctx := context.Background()
	keys, err := rdb.Keys(ctx, prefix+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatal("no presence keys under the prefix")
	}
	if err := rdb.Del(ctx, keys...).Err(); err != nil {
		t.Fatal(err)
	}
	waitOnline(t, g2, []protocol.Member{alice, bob})
	// The gateways tell their viewers to look again once all have rebuilt.
	testenv.Eventually(t, 10*time.Second, func() bool { return g1.rec.rebuilds() > 0 && g2.rec.rebuilds() > 0 }, "rebuilt callbacks")
	// A change after the rebuild works as before.
	g2.Disconnect(bob.ID)
	testenv.Eventually(t, 10*time.Second, func() bool { return slices.Contains(g1.rec.got(), off(bob)) }, "bob offline at g1")
	waitOnline(t, g1, []protocol.Member{alice})
}

// TestDeadGatewaySwept: a gateway that stops renewing its lease (it died)
// is removed by another one, whose sweep announces its users offline,
// except those still online elsewhere.
func TestDeadGatewaySwept(t *testing.T) {
	t.Parallel()
	rdb, prefix := redisClient(t)
	g1 := startGateway(t, rdb, prefix, "g1")
	g2 := startGateway(t, rdb, prefix, "g2")
	g1.Connect(alice.ID, alice.Username)
	g1.rec.waitChanges(t, []Change{on(alice)})
	g2.Connect(bob.ID, bob.Username)
	g2.Connect(alice.ID, alice.Username)
	g1.rec.waitChanges(t, []Change{on(alice), on(bob)})
	waitOnline(t, g1, []protocol.Member{alice, bob})

	g2.Abandon()
	g1.rec.waitChanges(t, []Change{on(alice), on(bob), off(bob)})
	waitOnline(t, g1, []protocol.Member{alice})
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() bool {
		members, err := rdb.SMembers(ctx, prefix+":presence:gateways").Result()
		return err == nil && cmp.Equal([]string{"g1"}, members)
	}, "only g1 in the gateway set")
	if n, err := rdb.Exists(ctx, prefix+":presence:users:g2").Result(); err != nil || n != 0 {
		t.Errorf("dead gateway's hash: exists=%d err=%v, want removed", n, err)
	}
	// An abandoned tracker writes nothing more.
	g2.Disconnect(bob.ID)
	g2.Connect(99, "ghost")
	waitOnline(t, g1, []protocol.Member{alice})
}

// TestLeaveAnnouncesOffline: a gateway stopped cleanly removes its lease
// and announces its users offline at once, not after the TTL.
func TestLeaveAnnouncesOffline(t *testing.T) {
	t.Parallel()
	rdb, prefix := redisClient(t)
	g1 := startGateway(t, rdb, prefix, "g1")
	// A long TTL and sweep: only leaving can make bob offline in time.
	tr, err := New(rdb, Config{Prefix: prefix, GatewayID: "g2", TTL: time.Hour, Sweep: time.Hour}, telemetry.NewLogger(io.Discard, 0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, func(Change) {}, nil, ready) }()
	<-ready
	tr.Connect(bob.ID, bob.Username)
	g1.rec.waitChanges(t, []Change{on(bob)})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	g1.rec.waitChanges(t, []Change{on(bob), off(bob)})
	if n, err := rdb.Exists(context.Background(), prefix+":presence:lease:g2").Result(); err != nil || n != 0 {
		t.Errorf("lease of the gateway that left: exists=%d err=%v, want removed", n, err)
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	rdb, _ := redisClient(t)
	if _, err := New(rdb, Config{}, telemetry.NewLogger(io.Discard, 0)); err == nil {
		t.Error("New without a prefix: no error")
	}
	a, err := New(rdb, Config{Prefix: "p"}, telemetry.NewLogger(io.Discard, 0))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(rdb, Config{Prefix: "p", TTL: 30 * time.Second}, telemetry.NewLogger(io.Discard, 0))
	if err != nil {
		t.Fatal(err)
	}
	if a.GatewayID() == "" || a.GatewayID() == b.GatewayID() {
		t.Errorf("gateway ids %q and %q: want random and distinct", a.GatewayID(), b.GatewayID())
	}
	if a.cfg.TTL != 15*time.Second || a.cfg.Refresh != 5*time.Second || a.cfg.Sweep != 5*time.Second {
		t.Errorf("defaults TTL %s refresh %s sweep %s, want 15s 5s 5s", a.cfg.TTL, a.cfg.Refresh, a.cfg.Sweep)
	}
	if b.cfg.Refresh != 10*time.Second {
		t.Errorf("refresh with TTL 30s = %s, want 10s", b.cfg.Refresh)
	}
}

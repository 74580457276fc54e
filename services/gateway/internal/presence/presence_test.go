package presence

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// startGateway runs a tracker under prefix until the test ends (or stop);
// tune changes the test configuration.
func startGateway(t *testing.T, rdb *redis.Client, prefix, id string, tune ...func(*Config)) *gateway {
	t.Helper()
	cfg := Config{Prefix: prefix, GatewayID: id, TTL: testTTL, Refresh: testRefresh, Sweep: testSweep}
	for _, f := range tune {
		f(&cfg)
	}
	tr, err := New(rdb, cfg, telemetry.NewLogger(io.Discard, 0))
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
	// An abandoned tracker writes nothing more: a change it would write
	// is never seen, while one written after it by g1 is.
	ghost := protocol.Member{ID: 99, Username: "ghost"}
	carol := protocol.Member{ID: 3, Username: "carol"}
	g2.Disconnect(bob.ID)
	g2.Connect(ghost.ID, ghost.Username)
	g1.Connect(carol.ID, carol.Username)
	testenv.Eventually(t, 10*time.Second, func() bool { return slices.Contains(g1.rec.got(), on(carol)) }, "carol online at g1")
	if got := g1.rec.got(); slices.Contains(got, on(ghost)) || slices.Contains(got, off(alice)) {
		t.Errorf("changes %v: the abandoned gateway wrote", got)
	}
	if got := online(t, g1, ghost.ID, alice.ID, carol.ID); !cmp.Equal([]protocol.Member{alice, carol}, got) {
		t.Errorf("online %v, want alice and carol only", got)
	}
	for _, k := range []string{"lease:g2", "users:g2"} {
		if n, err := rdb.Exists(ctx, prefix+":presence:"+k).Result(); err != nil || n != 0 {
			t.Errorf("%s of the abandoned gateway: exists=%d err=%v, want none", k, n, err)
		}
	}
}

// TestLapsedLeaseAnnouncedAgain: a gateway whose lease lapsed (evicted, or
// the gateway paused past the TTL) without being swept, while another
// gateway announced its user offline, announces the user online again when
// it takes its lease back, and has every gateway refresh its viewers.
func TestLapsedLeaseAnnouncedAgain(t *testing.T) {
	t.Parallel()
	rdb, prefix := redisClient(t)
	// No sweeps, and g1 renews only when it writes a change.
	g1 := startGateway(t, rdb, prefix, "g1", func(c *Config) { c.TTL, c.Refresh, c.Sweep = time.Hour, 50*time.Minute, time.Hour })
	g2 := startGateway(t, rdb, prefix, "g2", func(c *Config) { c.Sweep = time.Hour })
	g1.Connect(alice.ID, alice.Username)
	g2.Connect(alice.ID, alice.Username)
	g2.rec.waitChanges(t, []Change{on(alice)})

	ctx := context.Background()
	if err := rdb.Del(ctx, prefix+":presence:lease:g1").Err(); err != nil {
		t.Fatal(err)
	}
	// alice closes her tab on g2: g1 looks dead, so she is announced offline.
	g2.Disconnect(alice.ID)
	g2.rec.waitChanges(t, []Change{on(alice), off(alice)})
	// g1's next write finds its lease gone and writes its state again.
	g1.Connect(bob.ID, bob.Username)
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
		got := g2.rec.got()
		return len(got) == 4 && slices.Contains(got[2:], on(alice)) && slices.Contains(got[2:], on(bob))
	}, func() string {
		return fmt.Sprintf("changes at g2 %v, want alice and bob online again after alice offline", g2.rec.got())
	})
	waitOnline(t, g2, []protocol.Member{alice, bob}, alice.ID, bob.ID)
	testenv.Eventually(t, 10*time.Second, func() bool { return g2.rec.rebuilds() > 0 }, "g2 refreshes its viewers")
}

// namedClient is a Redis client whose connections carry a name, so that a
// test can find them among the server's clients.
func namedClient(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*redis.Client, string, string) {
	t.Helper()
	url, prefix := testenv.Redis(t)
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opts.ClientName = testenv.UniqueName("presence")
	opts.Dialer = dial
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	return rdb, prefix, opts.ClientName
}

// TestResubscribeRefreshesViews: changes published while the subscription
// was down are lost, so once it is back the gateway refreshes its viewers,
// and receives changes again.
func TestResubscribeRefreshesViews(t *testing.T) {
	t.Parallel()
	rdb, prefix, name := namedClient(t, nil)
	g1 := startGateway(t, rdb, prefix, "g1")
	ctx := context.Background()
	list, err := rdb.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for line := range strings.Lines(list) {
		// The tracker's subscription: its one connection subscribed to a channel.
		if strings.Contains(line, " name="+name+" ") && strings.Contains(line, " sub=1 ") {
			id, _, _ := strings.Cut(strings.TrimPrefix(line, "id="), " ")
			n, err := strconv.ParseInt(id, 10, 64)
			if err != nil {
				t.Fatalf("client line %q: %v", line, err)
			}
			if err := rdb.ClientKillByFilter(ctx, "ID", strconv.FormatInt(n, 10)).Err(); err != nil {
				t.Fatal(err)
			}
			killed++
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d subscriptions of the tracker, want 1:\n%s", killed, list)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return g1.rec.rebuilds() > 0 }, "viewers refreshed after the subscription came back")
	g1.Connect(alice.ID, alice.Username)
	g1.rec.waitChanges(t, []Change{on(alice)})
}

// TestSubscribeRetriedUntilRedisUp: a gateway started while Redis is
// unreachable waits for it instead of failing.
func TestSubscribeRetriedUntilRedisUp(t *testing.T) {
	t.Parallel()
	var up atomic.Bool
	var refused atomic.Int32
	rdb, prefix, _ := namedClient(t, func(ctx context.Context, network, addr string) (net.Conn, error) {
		if !up.Load() {
			refused.Add(1)
			return nil, errors.New("redis is down")
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	})
	tr, err := New(rdb, Config{Prefix: prefix, GatewayID: "g1", TTL: testTTL, Refresh: testRefresh, Sweep: testSweep},
		telemetry.NewLogger(io.Discard, 0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan struct{})
	var runErr error
	go func() {
		defer close(done)
		runErr = tr.Run(ctx, func(Change) {}, nil, ready)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	testenv.Eventually(t, 10*time.Second, func() bool { return refused.Load() >= 2 }, "connections refused")
	up.Store(true)
	select {
	case <-ready:
	case <-done:
		t.Fatalf("Run ended before Redis came up: %v", runErr)
	case <-time.After(10 * time.Second):
		t.Fatal("tracker not ready after Redis came up")
	}
	tr.Connect(alice.ID, alice.Username)
	testenv.Eventually(t, 10*time.Second, func() bool {
		got, err := tr.Online(context.Background(), []int64{alice.ID})
		return err == nil && cmp.Equal([]protocol.Member{alice}, got)
	}, "alice online")
}

// onlineAllCounter counts the runs of the script listing every online user.
type onlineAllCounter struct{ n atomic.Int32 }

func (c *onlineAllCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *onlineAllCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (c *onlineAllCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		// OnlineAll passes the prefix only: evalsha, sha, 0 keys, prefix.
		if a := cmd.Args(); len(a) == 4 && a[1] == onlineScript.Hash() {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

// TestOnlineAllShared: listing every online user (viewing general) runs
// the script once for concurrent and repeated calls, until a change is
// received.
func TestOnlineAllShared(t *testing.T) {
	t.Parallel()
	rdb, prefix := redisClient(t)
	counted, _, _ := namedClient(t, nil)
	counter := &onlineAllCounter{}
	counted.AddHook(counter)
	g1 := startGateway(t, rdb, prefix, "g1")
	g2 := startGateway(t, counted, prefix, "g2", func(c *Config) { c.OnlineAllCache = time.Hour })
	g1.Connect(alice.ID, alice.Username)
	g2.rec.waitChanges(t, []Change{on(alice)})

	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			got, err := g2.OnlineAll(context.Background())
			if err != nil || !cmp.Equal([]protocol.Member{alice}, got) {
				t.Errorf("online %v (err %v), want alice", got, err)
			}
		})
	}
	wg.Wait()
	if got := online(t, g2); !cmp.Equal([]protocol.Member{alice}, got) {
		t.Errorf("online %v, want alice", got)
	}
	if n := counter.n.Load(); n != 1 {
		t.Errorf("21 calls ran the script %d times, want once", n)
	}
	// A change received makes the next call ask Redis.
	g1.Connect(bob.ID, bob.Username)
	g2.rec.waitChanges(t, []Change{on(alice), on(bob)})
	if got := online(t, g2); !cmp.Equal([]protocol.Member{alice, bob}, got) {
		t.Errorf("online after bob came %v, want alice and bob", got)
	}
	if n := counter.n.Load(); n != 2 {
		t.Errorf("script ran %d times, want twice", n)
	}
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

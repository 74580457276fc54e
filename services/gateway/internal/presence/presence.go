// Package presence tracks who is online, over every gateway replica, on
// gateway leases in Redis.
//
// Each gateway holds a lease key with a TTL, refreshed every Refresh, and a
// hash of the users with at least one of its connections. A user is online
// while some gateway with a live lease has them. Every gateway sweeps every
// Sweep for gateways whose lease expired (a gateway that died), removes
// them and announces their users offline unless they are online elsewhere,
// so a dead gateway's users go offline within TTL + Sweep. A refresh that
// finds its own lease gone (Redis restarted or lost its data) writes the
// gateway's whole state again from memory, so presence rebuilds without
// restarting gateways. Changes (a user's first connection on any gateway,
// or their last one closed) are published on one Redis channel that every
// gateway subscribes to.
//
// Whenever changes may have been missed (a gateway rebuilt its state, this
// gateway's subscription was re-established, or its lease renewal failed
// and then worked again), the gateway's rebuilt callback runs after a
// settle delay, so that it sends its viewers fresh lists.
//
// Connections change the gateway's memory only; one goroutine writes the
// changes to Redis in batches, so connecting never waits on Redis.
package presence

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/communications/communications/libs/protocol"
)

// Config tunes a Tracker. Zero fields take the defaults given.
type Config struct {
	// Prefix of the Redis keys and channel. Required.
	Prefix string
	// GatewayID names this gateway; it must be unique among the live ones.
	// Default: random.
	GatewayID string
	// TTL of the gateway's lease. Default 15s.
	TTL time.Duration
	// Refresh is how often the lease is renewed. Default TTL/3.
	Refresh time.Duration
	// Sweep is how often expired leases are looked for. Default 5s.
	Sweep time.Duration
	// OnlineAllCache is how long an OnlineAll answer is reused (until a
	// change is received). Default 1s; negative: never reused.
	OnlineAllCache time.Duration
}

// Change is a user who came online (first connection on any gateway) or
// went offline (last connection closed, or their gateway's lease expired).
type Change struct {
	UserID   int64  `json:"user_id"`
	Username string `json:"username"`
	Online   bool   `json:"online"`
}

// Tracker is one gateway's presence.
type Tracker struct {
	rdb *redis.Client
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	users map[int64]*local
	// dirty holds the users whose state changed since the last write.
	dirty map[int64]struct{}
	// resync asks for the whole state to be written (a write failed).
	resync bool

	// renewFailed: the last lease renewal failed; viewers get fresh lists
	// once one works again. Only Run's goroutine uses it.
	renewFailed bool

	// all caches OnlineAll: allGen counts the changes received, and an
	// answer is kept (and a shared query joined) only for the same count.
	allMu     sync.Mutex
	allGen    uint64
	allList   []protocol.Member
	allAt     time.Time
	allValid  bool
	allFlight singleflight.Group

	wake      chan struct{}
	stale     chan struct{}
	abandoned atomic.Bool
	abandon   chan struct{}
	abandonMu sync.Once
}

type local struct {
	conns int
	name  string
}

// New returns a tracker; Run must run for anything to reach Redis.
func New(rdb *redis.Client, cfg Config, log *slog.Logger) (*Tracker, error) {
	if cfg.Prefix == "" {
		return nil, errors.New("presence: no key prefix")
	}
	if cfg.GatewayID == "" {
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("presence: gateway id: %w", err)
		}
		cfg.GatewayID = hex.EncodeToString(b)
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 15 * time.Second
	}
	if cfg.Refresh <= 0 || cfg.Refresh >= cfg.TTL {
		cfg.Refresh = cfg.TTL / 3
	}
	if cfg.Sweep <= 0 {
		cfg.Sweep = 5 * time.Second
	}
	if cfg.OnlineAllCache == 0 {
		cfg.OnlineAllCache = time.Second
	}
	return &Tracker{
		rdb: rdb, cfg: cfg, log: log.With("gateway_id", cfg.GatewayID),
		users:   map[int64]*local{},
		dirty:   map[int64]struct{}{},
		wake:    make(chan struct{}, 1),
		stale:   make(chan struct{}, 1),
		abandon: make(chan struct{}),
	}, nil
}

// GatewayID returns the gateway's id in Redis.
func (t *Tracker) GatewayID() string { return t.cfg.GatewayID }

// Connect counts a connection of a user.
func (t *Tracker) Connect(userID int64, username string) {
	t.mu.Lock()
	u := t.users[userID]
	if u == nil {
		u = &local{name: username}
		t.users[userID] = u
		t.dirty[userID] = struct{}{}
	}
	u.conns++
	t.mu.Unlock()
	t.poke()
}

// Disconnect counts a connection of a user gone.
func (t *Tracker) Disconnect(userID int64) {
	t.mu.Lock()
	u := t.users[userID]
	if u == nil {
		t.mu.Unlock()
		return
	}
	if u.conns--; u.conns <= 0 {
		delete(t.users, userID)
		t.dirty[userID] = struct{}{}
	}
	t.mu.Unlock()
	t.poke()
}

func (t *Tracker) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// Abandon makes the tracker stop writing to Redis at once and leave its
// lease to expire, as if the gateway had died: for tests of a gateway's
// death.
func (t *Tracker) Abandon() {
	t.abandonMu.Do(func() {
		t.abandoned.Store(true)
		close(t.abandon)
	})
}

// Online returns those of the users who are online, by username.
func (t *Tracker) Online(ctx context.Context, userIDs []int64) ([]protocol.Member, error) {
	if len(userIDs) == 0 {
		return []protocol.Member{}, nil
	}
	args := make([]any, 0, len(userIDs)+1)
	args = append(args, t.cfg.Prefix)
	for _, id := range userIDs {
		args = append(args, strconv.FormatInt(id, 10))
	}
	return t.online(ctx, args)
}

// OnlineAll returns every online user, by username. The script reads every
// gateway's whole hash, so concurrent calls share one run, and its answer
// is reused for Config.OnlineAllCache unless a change is received
// meanwhile: an answer is never older than the changes this gateway has
// seen. The slice returned is shared: callers must not modify it.
func (t *Tracker) OnlineAll(ctx context.Context) ([]protocol.Member, error) {
	t.allMu.Lock()
	if t.allValid && time.Since(t.allAt) < t.cfg.OnlineAllCache {
		list := t.allList
		t.allMu.Unlock()
		return list, nil
	}
	gen := t.allGen
	t.allMu.Unlock()
	ch := t.allFlight.DoChan(strconv.FormatUint(gen, 10), func() (any, error) {
		// The run is shared: one caller giving up must not fail the others.
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		list, err := t.online(qctx, []any{t.cfg.Prefix})
		if err == nil && t.cfg.OnlineAllCache > 0 {
			t.allMu.Lock()
			if t.allGen == gen {
				t.allList, t.allAt, t.allValid = list, time.Now(), true
			}
			t.allMu.Unlock()
		}
		return list, err
	})
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("presence: online users: %w", ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.([]protocol.Member), nil
	}
}

// invalidate drops the cached OnlineAll answer: a change was received.
func (t *Tracker) invalidate() {
	t.allMu.Lock()
	t.allGen++
	t.allValid = false
	t.allList = nil
	t.allMu.Unlock()
}

// markStale asks for the rebuilt callback (after the settle delay).
func (t *Tracker) markStale() {
	select {
	case t.stale <- struct{}{}:
	default:
	}
}

func (t *Tracker) online(ctx context.Context, args []any) ([]protocol.Member, error) {
	flat, err := onlineScript.Run(ctx, t.rdb, nil, args...).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("presence: online users: %w", err)
	}
	out := make([]protocol.Member, 0, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		id, err := strconv.ParseInt(flat[i], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("presence: user id %q in redis", flat[i])
		}
		out = append(out, protocol.Member{ID: id, Username: flat[i+1]})
	}
	slices.SortFunc(out, func(a, b protocol.Member) int { return strings.Compare(a.Username, b.Username) })
	return out, nil
}

// channel is where changes are published.
func (t *Tracker) channel() string { return t.cfg.Prefix + ":presence" }

// Run keeps the gateway's presence in Redis and hands every change (from
// any gateway) to onChange, until ctx ends; then it removes the gateway's
// lease and announces its users offline (unless abandoned). rebuilt is
// called (in its own goroutine, never two at once) one refresh interval
// after changes may have been missed: a gateway (this one or another)
// found its lease gone and wrote its state again, this gateway's
// subscription was re-established, or its lease renewal failed and then
// worked again. By then the other gateways have rebuilt too, and presence
// shown to clients may be refreshed. ready, if not nil, is closed once the
// channel is subscribed and the lease taken.
func (t *Tracker) Run(ctx context.Context, onChange func(Change), rebuilt func(), ready chan<- struct{}) error {
	ps := t.rdb.Subscribe(ctx, t.channel())
	defer ps.Close()
	// The subscription and the first write are retried until they work or
	// ctx ends (Redis may come up after the gateway): the gateway is not
	// online for anyone before.
	backoff := 100 * time.Millisecond
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
		return true
	}
	for {
		if _, err := ps.Receive(ctx); err == nil {
			break
		} else if ctx.Err() != nil {
			return nil
		} else {
			t.log.WarnContext(ctx, "presence: subscribe; retrying", "err", err)
		}
		if !wait() {
			return nil
		}
	}
	for {
		if _, err := t.sync(ctx, false); err == nil {
			break
		} else if ctx.Err() != nil {
			return nil
		} else {
			t.log.WarnContext(ctx, "presence: first write; retrying", "err", err)
		}
		if !wait() {
			return nil
		}
	}
	if ready != nil {
		close(ready)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	// Every message after the first subscription is a change, a rebuilt
	// notice or a re-subscription (the connection to Redis broke, and
	// changes may have been lost meanwhile).
	msgs := ps.ChannelWithSubscriptions(redis.WithChannelSize(4096))
	wg.Go(func() {
		for m := range msgs {
			t.invalidate()
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					t.log.Info("presence: subscribed again; refreshing viewers")
					t.markStale()
				}
			case *redis.Message:
				var n struct {
					Change
					Rebuilt string `json:"rebuilt"`
				}
				if err := json.Unmarshal([]byte(m.Payload), &n); err != nil || (n.UserID == 0 && n.Rebuilt == "") {
					t.log.Warn("presence: malformed change", "payload", m.Payload)
					continue
				}
				if n.Rebuilt != "" {
					t.markStale()
					continue
				}
				onChange(n.Change)
			}
		}
	})
	defer ps.Close() // ends the range above before wg.Wait
	if rebuilt != nil {
		wg.Go(func() { t.refreshViews(ctx, rebuilt) })
	}

	refresh := time.NewTicker(t.cfg.Refresh)
	defer refresh.Stop()
	sweep := time.NewTicker(t.cfg.Sweep)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			t.leave()
			return nil
		case <-t.abandon:
			<-ctx.Done()
			return nil
		case <-t.wake:
			t.apply(ctx)
		case <-refresh.C:
			t.refresh(ctx)
		case <-sweep.C:
			if n, err := reapScript.Run(ctx, t.rdb, nil, t.cfg.Prefix).Int(); err != nil {
				if ctx.Err() == nil {
					t.log.WarnContext(ctx, "presence: sweep", "err", err)
				}
			} else if n > 0 {
				t.log.InfoContext(ctx, "presence: removed gateways whose lease expired", "gateways", n)
			}
		}
	}
}

// refreshViews calls rebuilt one refresh interval after each request for
// it, requests arriving meanwhile being served by the same call, until ctx
// ends.
func (t *Tracker) refreshViews(ctx context.Context, rebuilt func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.stale:
		}
		settle := time.NewTimer(t.cfg.Refresh)
		select {
		case <-ctx.Done():
			settle.Stop()
			return
		case <-settle.C:
		}
		// Requests made while settling are covered by this call.
		select {
		case <-t.stale:
		default:
		}
		rebuilt()
	}
}

// apply writes the users changed since the last write; when it finds the
// lease gone, it writes the whole state again.
func (t *Tracker) apply(ctx context.Context) {
	t.mu.Lock()
	if len(t.dirty) == 0 || t.resync {
		// A pending full write covers the changes.
		t.mu.Unlock()
		return
	}
	var up, down []any
	for id := range t.dirty {
		if u := t.users[id]; u != nil {
			up = append(up, strconv.FormatInt(id, 10), u.name)
		} else {
			down = append(down, strconv.FormatInt(id, 10))
		}
	}
	clear(t.dirty)
	t.mu.Unlock()
	args := append([]any{t.cfg.Prefix, t.cfg.GatewayID, len(up) / 2}, up...)
	args = append(args, down...)
	n, err := applyScript.Run(ctx, t.rdb, nil, args...).Int()
	if err == nil && n == 0 {
		return
	}
	if err != nil && ctx.Err() == nil {
		t.log.WarnContext(ctx, "presence: write changes; writing the whole state at the next refresh", "err", err)
	}
	t.mu.Lock()
	t.resync = true
	t.mu.Unlock()
	if err == nil {
		// The lease is gone: write everything now.
		t.refresh(ctx)
	}
}

// refresh renews the lease, or writes the whole state when the lease is gone
// or an earlier write failed. Once it works after a failure, viewers get
// fresh lists (changes may have been missed meanwhile).
func (t *Tracker) refresh(ctx context.Context) {
	t.mu.Lock()
	resync := t.resync
	t.mu.Unlock()
	if !resync {
		ok, err := refreshScript.Run(ctx, t.rdb, nil, t.cfg.Prefix, t.cfg.GatewayID, t.cfg.TTL.Milliseconds()).Int()
		if err != nil {
			if ctx.Err() == nil {
				t.log.WarnContext(ctx, "presence: renew lease", "err", err)
				t.renewFailed = true
			}
			return
		}
		if ok == 1 {
			t.renewed()
			return
		}
		t.log.WarnContext(ctx, "presence: lease lost (redis restarted or evicted it); writing the whole state")
	}
	if _, err := t.sync(ctx, true); err != nil {
		if ctx.Err() == nil {
			t.log.WarnContext(ctx, "presence: write the whole state", "err", err)
			t.renewFailed = true
		}
		return
	}
	t.renewed()
}

// renewed notes a lease renewal that worked, asking for fresh lists for
// the viewers when the one before had failed.
func (t *Tracker) renewed() {
	if t.renewFailed {
		t.renewFailed = false
		t.markStale()
	}
}

// sync takes the lease and writes the whole state. It reports whether the
// lease was missing; notify makes it then tell every gateway to refresh
// its viewers (false for the gateway's first write).
func (t *Tracker) sync(ctx context.Context, notify bool) (bool, error) {
	flag := "0"
	if notify {
		flag = "1"
	}
	t.mu.Lock()
	args := make([]any, 0, 4+2*len(t.users))
	args = append(args, t.cfg.Prefix, t.cfg.GatewayID, t.cfg.TTL.Milliseconds(), flag)
	for id, u := range t.users {
		args = append(args, strconv.FormatInt(id, 10), u.name)
	}
	// Changes from here on are written after this.
	clear(t.dirty)
	t.resync = false
	t.mu.Unlock()
	missing, err := syncScript.Run(ctx, t.rdb, nil, args...).Int()
	if err != nil {
		t.mu.Lock()
		t.resync = true
		t.mu.Unlock()
		return false, fmt.Errorf("presence: write state: %w", err)
	}
	return missing == 1, nil
}

// leave removes the gateway from Redis and announces its users offline
// (those not online elsewhere).
func (t *Tracker) leave() {
	if t.abandoned.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := reapScript.Run(ctx, t.rdb, nil, t.cfg.Prefix, t.cfg.GatewayID).Err(); err != nil {
		t.log.Warn("presence: leave; the lease will expire", "err", err)
	}
}

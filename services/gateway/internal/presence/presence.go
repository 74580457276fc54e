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

	wake      chan struct{}
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
	return &Tracker{
		rdb: rdb, cfg: cfg, log: log.With("gateway_id", cfg.GatewayID),
		users:   map[int64]*local{},
		dirty:   map[int64]struct{}{},
		wake:    make(chan struct{}, 1),
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

// OnlineAll returns every online user, by username.
func (t *Tracker) OnlineAll(ctx context.Context) ([]protocol.Member, error) {
	return t.online(ctx, []any{t.cfg.Prefix})
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
// called (in its own goroutine) one refresh interval after the gateway
// found its lease gone and wrote its state again: by then the other
// gateways have done the same, and presence shown to clients may be
// refreshed. ready, if not nil, is closed once the channel is subscribed
// and the lease taken.
func (t *Tracker) Run(ctx context.Context, onChange func(Change), rebuilt func(), ready chan<- struct{}) error {
	ps := t.rdb.Subscribe(ctx, t.channel())
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		return fmt.Errorf("presence: subscribe: %w", err)
	}
	// The first write is retried until it works or ctx ends: the gateway
	// is not online for anyone before.
	for {
		if _, err := t.sync(ctx); err == nil {
			break
		} else if ctx.Err() != nil {
			return nil
		} else {
			t.log.WarnContext(ctx, "presence: first write; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	if ready != nil {
		close(ready)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	msgs := ps.Channel(redis.WithChannelSize(4096))
	wg.Go(func() {
		for m := range msgs {
			var ch Change
			if err := json.Unmarshal([]byte(m.Payload), &ch); err != nil || ch.UserID == 0 {
				t.log.Warn("presence: malformed change", "payload", m.Payload)
				continue
			}
			onChange(ch)
		}
	})
	defer ps.Close() // ends the range above before wg.Wait

	refresh := time.NewTicker(t.cfg.Refresh)
	defer refresh.Stop()
	sweep := time.NewTicker(t.cfg.Sweep)
	defer sweep.Stop()
	rebuildPending := false
	for {
		select {
		case <-ctx.Done():
			t.leave()
			return nil
		case <-t.abandon:
			<-ctx.Done()
			return nil
		case <-t.wake:
			if t.apply(ctx) {
				rebuildPending = true
			}
		case <-refresh.C:
			if rebuildPending && rebuilt != nil {
				rebuildPending = false
				wg.Go(rebuilt)
			}
			if t.refresh(ctx) {
				rebuildPending = true
			}
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

// apply writes the users changed since the last write. It reports whether
// it found the lease gone and wrote the whole state again.
func (t *Tracker) apply(ctx context.Context) (rebuilt bool) {
	t.mu.Lock()
	if len(t.dirty) == 0 || t.resync {
		// A pending full write covers the changes.
		t.mu.Unlock()
		return false
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
		return false
	}
	if err != nil && ctx.Err() == nil {
		t.log.WarnContext(ctx, "presence: write changes; writing the whole state at the next refresh", "err", err)
	}
	t.mu.Lock()
	t.resync = true
	t.mu.Unlock()
	if err == nil {
		// The lease is gone: write everything now.
		return t.refresh(ctx)
	}
	return false
}

// refresh renews the lease, or writes the whole state when the lease is gone
// or an earlier write failed. It reports whether the lease had to be taken
// again (Redis had lost it).
func (t *Tracker) refresh(ctx context.Context) (rebuilt bool) {
	t.mu.Lock()
	resync := t.resync
	t.mu.Unlock()
	if !resync {
		ok, err := refreshScript.Run(ctx, t.rdb, nil, t.cfg.Prefix, t.cfg.GatewayID, t.cfg.TTL.Milliseconds()).Int()
		if err != nil {
			if ctx.Err() == nil {
				t.log.WarnContext(ctx, "presence: renew lease", "err", err)
			}
			return false
		}
		if ok == 1 {
			return false
		}
		t.log.WarnContext(ctx, "presence: lease lost (redis restarted or evicted it); writing the whole state")
	}
	missing, err := t.sync(ctx)
	if err != nil {
		if ctx.Err() == nil {
			t.log.WarnContext(ctx, "presence: write the whole state", "err", err)
		}
		return false
	}
	return missing
}

// sync takes the lease and writes the whole state. It reports whether the
// lease was missing.
func (t *Tracker) sync(ctx context.Context) (bool, error) {
	t.mu.Lock()
	args := make([]any, 0, 3+2*len(t.users))
	args = append(args, t.cfg.Prefix, t.cfg.GatewayID, t.cfg.TTL.Milliseconds())
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

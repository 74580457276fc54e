package scenario

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"
)

// IdleConfig configures the idle scenario. Zero fields take the defaults
// given.
type IdleConfig struct {
	Target
	// Gateway is the index of the gateway all connections go to (0); its
	// process is named GatewayName ("gateway-1") in Pids and Debug.
	Gateway     int
	GatewayName string
	Conns       int // idle websockets (15000)
	// Users is the number of users the connections belong to, each with
	// Conns/Users of them (100).
	Users int
	// Settle is how long the connections stay open, idle, before the
	// gateway is measured (10s).
	Settle  time.Duration
	Sources int // loopback source addresses 127.0.0.1..N (16)
	Setup   int // logins and dials at once (32)
	// Procs is the number of processes holding the connections (1): this
	// one and Procs-1 workers it starts, for more connections than one
	// process may have files open.
	Procs int
	// UserPrefix starts every username ("lg_idle"); Password is theirs.
	UserPrefix, Password string
	Log                  io.Writer
	// TokenFile keeps the users' tokens between runs ("": none).
	TokenFile string
}

func (c *IdleConfig) defaults() {
	setDefault(&c.GatewayName, fmt.Sprintf("gateway-%d", c.Gateway+1))
	setDefault(&c.Conns, 15000)
	setDefault(&c.Users, 100)
	c.Users = min(c.Users, c.Conns)
	setDefault(&c.Settle, 10*time.Second)
	setDefault(&c.Sources, 16)
	setDefault(&c.Setup, 32)
	if c.Procs < 1 {
		c.Procs = 1
	}
	setDefault(&c.UserPrefix, "lg_idle")
	setDefault(&c.Password, "loadgen-password")
	setDefault(&c.Log, io.Discard)
}

// IdleReport holds the figures of an idle run: the gateway's resident
// memory and goroutines before the connections were opened and while they
// were open.
type IdleReport struct {
	Scenario          string    `json:"scenario"`
	Gateway           string    `json:"gateway"`
	Connections       int       `json:"connections"`
	RSSBeforeKiB      int64     `json:"gateway_rss_before_kib"`
	RSSAfterKiB       int64     `json:"gateway_rss_after_kib"`
	RSSPerConnKiB     float64   `json:"gateway_rss_per_connection_kib"`
	GoroutinesBefore  int64     `json:"gateway_goroutines_before"`
	GoroutinesAfter   int64     `json:"gateway_goroutines_after"`
	GoroutinesPerConn float64   `json:"gateway_goroutines_per_connection"`
	Processes         []Process `json:"processes"`
	// LoadgenRSSPerConnKiB is the load generator's own memory per
	// connection it holds (its reader goroutine and buffers); with workers,
	// of the first process and its share.
	LoadgenRSSPerConnKiB float64 `json:"loadgen_rss_per_connection_kib"`
}

// RunIdle opens Conns websockets to one gateway, keeps them idle for
// Settle, and measures the gateway.
func RunIdle(ctx context.Context, cfg IdleConfig) (*IdleReport, error) {
	cfg.defaults()
	if cfg.Gateway < 0 || cfg.Gateway >= len(cfg.Gateways) {
		return nil, fmt.Errorf("idle: no gateway %d", cfg.Gateway)
	}
	if err := ensureFiles(cfg.Conns - cfg.Conns/cfg.Procs*(cfg.Procs-1)); err != nil {
		return nil, err
	}
	a := newAPI(cfg.Gateways[cfg.Gateway : cfg.Gateway+1])
	fmt.Fprintf(cfg.Log, "idle: setting up %d users ...\n", cfg.Users)
	tokens := make([]string, cfg.Users)
	cache, err := loadTokens(cfg.TokenFile)
	if err != nil {
		return nil, err
	}
	err = parallel(ctx, cfg.Users, cfg.Setup, func(ctx context.Context, i int) error {
		t, err := a.cachedUser(ctx, cache, i, fmt.Sprintf("%s%06d", cfg.UserPrefix, i), cfg.Password)
		tokens[i] = t
		return err
	})
	if err := errors.Join(err, cache.save()); err != nil {
		return nil, fmt.Errorf("idle: users: %w", err)
	}
	debug := cfg.Debug[cfg.GatewayName]
	pids := map[string]int{}
	if pid, ok := cfg.Pids[cfg.GatewayName]; ok {
		pids[cfg.GatewayName] = pid
	}
	rep := &IdleReport{Scenario: "idle", Gateway: cfg.GatewayName, Connections: cfg.Conns}
	if debug != "" {
		if rep.GoroutinesBefore, err = goroutines(debug); err != nil {
			return nil, fmt.Errorf("idle: gateway goroutines: %w", err)
		}
	}
	before := snapshot(pids)

	fmt.Fprintf(cfg.Log, "idle: opening %d websockets to %s in %d processes ...\n", cfg.Conns, cfg.Gateways[cfg.Gateway], cfg.Procs)
	// This process opens the first share; workers (this program again)
	// open the others.
	share := cfg.Conns / cfg.Procs
	own := cfg.Conns - share*(cfg.Procs-1)
	var workers []*idleWorker
	defer func() {
		for _, w := range workers {
			w.stop()
		}
	}()
	for k := 1; k < cfg.Procs; k++ {
		w, err := startIdleWorker(ctx, IdleWorkerSpec{Gateway: cfg.Gateways[cfg.Gateway], Tokens: tokens,
			From: own + (k-1)*share, N: share, Sources: cfg.Sources, Setup: cfg.Setup})
		if err != nil {
			return nil, fmt.Errorf("idle: worker %d: %w", k, err)
		}
		workers = append(workers, w)
	}
	conns, readers, err := openIdle(ctx, newDialers(cfg.Sources), cfg.Gateways[cfg.Gateway], tokens, 0, own, cfg.Setup)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.ws.Close()
			}
		}
		readers.Wait()
	}()
	if err != nil {
		return nil, fmt.Errorf("idle: connections (%d open): %w%s", countOpen(conns), err, staleHint(cfg.TokenFile))
	}
	for k, w := range workers {
		if err := w.ready(); err != nil {
			return nil, fmt.Errorf("idle: worker %d: %w%s", k+1, err, staleHint(cfg.TokenFile))
		}
	}
	fmt.Fprintf(cfg.Log, "idle: %d connections open; idle for %s ...\n", cfg.Conns, cfg.Settle)
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(cfg.Settle):
	}
	if debug != "" {
		if rep.GoroutinesAfter, err = goroutines(debug); err != nil {
			return nil, fmt.Errorf("idle: gateway goroutines: %w", err)
		}
	}
	after := snapshot(pids)
	rep.Processes = processes(pids, before, after)
	for _, p := range rep.Processes {
		perConn := float64(p.RSSAfterKiB-p.RSSBeforeKiB) / float64(cfg.Conns)
		switch p.Name {
		case cfg.GatewayName:
			rep.RSSBeforeKiB, rep.RSSAfterKiB, rep.RSSPerConnKiB = p.RSSBeforeKiB, p.RSSAfterKiB, perConn
		case loadgenName:
			// This process holds its own share only.
			rep.LoadgenRSSPerConnKiB = float64(p.RSSAfterKiB-p.RSSBeforeKiB) / float64(own)
		}
	}
	rep.GoroutinesPerConn = float64(rep.GoroutinesAfter-rep.GoroutinesBefore) / float64(cfg.Conns)
	runtime.KeepAlive(conns)
	return rep, nil
}

// openIdle opens connections from to from+n-1 to gateway base, connection
// i as the user of tokens[i mod len(tokens)], each with a reader that only
// answers pings. On error, conns holds those opened.
func openIdle(ctx context.Context, d dialers, base string, tokens []string, from, n, setup int) ([]*conn, *sync.WaitGroup, error) {
	conns := make([]*conn, n)
	readers := &sync.WaitGroup{}
	err := parallel(ctx, n, setup, func(ctx context.Context, k int) error {
		i := from + k
		ws, err := d.dial(ctx, i, base, tokens[i%len(tokens)])
		if err != nil {
			return err
		}
		conns[k] = &conn{ws: ws}
		readers.Add(1)
		go func() {
			// Reading answers the gateway's pings; nothing else comes.
			defer readers.Done()
			for {
				if _, _, err := ws.NextReader(); err != nil {
					return
				}
			}
		}()
		return nil
	})
	return conns, readers, err
}

func countOpen(conns []*conn) int {
	n := 0
	for _, c := range conns {
		if c != nil {
			n++
		}
	}
	return n
}

// WriteTable writes the report as a table.
func (rep *IdleReport) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "scenario idle: %d idle websockets to %s\n", rep.Connections, rep.Gateway)
	row := func(k string, v any) { fmt.Fprintf(w, "  %-28s %v\n", k, v) }
	row("connections", rep.Connections)
	row("gateway RSS before MiB", fmt.Sprintf("%.1f", float64(rep.RSSBeforeKiB)/1024))
	row("gateway RSS after MiB", fmt.Sprintf("%.1f", float64(rep.RSSAfterKiB)/1024))
	row("gateway RSS KiB/connection", fmt.Sprintf("%.2f", rep.RSSPerConnKiB))
	row("gateway goroutines before", rep.GoroutinesBefore)
	row("gateway goroutines after", rep.GoroutinesAfter)
	row("goroutines/connection", fmt.Sprintf("%.2f", rep.GoroutinesPerConn))
	row("loadgen RSS KiB/connection", fmt.Sprintf("%.2f", rep.LoadgenRSSPerConnKiB))
	writeProcesses(w, rep.Processes, 0)
}

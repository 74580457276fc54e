// Package gatewaysvc wires the gateway: its configuration and Run, which
// main calls and the end-to-end tests start in-process (two replicas).
package gatewaysvc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/communications/communications/libs/debugsrv"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/services/gateway/internal/busevents"
	"github.com/communications/communications/services/gateway/internal/httpapi"
	"github.com/communications/communications/services/gateway/internal/hub"
	"github.com/communications/communications/services/gateway/internal/presence"
	"github.com/communications/communications/services/gateway/internal/ratelimit"
	"github.com/communications/communications/services/gateway/internal/upstream"
	"github.com/communications/communications/services/gateway/internal/ws"
)

// EnvPrefix prefixes every environment variable of the gateway.
const EnvPrefix = "GATEWAY_"

// Config is the gateway's configuration, read from GATEWAY_* variables.
type Config struct {
	HTTPAddr        string        `env:"HTTP_ADDR" envDefault:"127.0.0.1:8080"`
	DebugAddr       string        `env:"DEBUG_ADDR" envDefault:"127.0.0.1:9100"`
	NATSURL         string        `env:"NATS_URL" envDefault:"nats://127.0.0.1:4222"`
	RedisURL        string        `env:"REDIS_URL" envDefault:"redis://127.0.0.1:6379/0"`
	RedisPrefix     string        `env:"REDIS_PREFIX" envDefault:"comms"`
	SubjectPrefix   string        `env:"SUBJECT_PREFIX" envDefault:"comms"`
	AllowedOrigins  []string      `env:"ALLOWED_ORIGINS" envSeparator:","`
	TrustedProxies  []string      `env:"TRUSTED_PROXIES" envSeparator:","`
	WebDir          string        `env:"WEB_DIR" envDefault:"web/dist"`
	AuthRatePerAddr int           `env:"AUTH_RATE_PER_ADDRESS" envDefault:"30"`
	AuthRatePerUser int           `env:"AUTH_RATE_PER_USERNAME" envDefault:"10"`
	WriteRate       int           `env:"WRITE_RATE_PER_USER" envDefault:"120"`
	SecureCookies   bool          `env:"SECURE_COOKIES" envDefault:"false"`
	RequestTimeout  time.Duration `env:"REQUEST_TIMEOUT" envDefault:"5s"`
	SendQueue       int           `env:"SEND_QUEUE" envDefault:"256"`
	WriteTimeout    time.Duration `env:"WRITE_TIMEOUT" envDefault:"10s"`
	PongWait        time.Duration `env:"PONG_WAIT" envDefault:"60s"`
	ResyncInterval  time.Duration `env:"RESYNC_INTERVAL" envDefault:"5m"`
	PositionCheck   time.Duration `env:"POSITION_CHECK_INTERVAL" envDefault:"30s"`
	SendRate        float64       `env:"SEND_RATE" envDefault:"20"`
	SendBurst       int           `env:"SEND_BURST" envDefault:"40"`
	SendRefusals    int           `env:"SEND_REFUSALS_BEFORE_CLOSE" envDefault:"10"`
	TypingInterval  time.Duration `env:"TYPING_INTERVAL" envDefault:"2s"`
	// SetupConcurrency bounds the new websockets set up at once; up to
	// SetupQueue more wait for their turn in order (then 503).
	SetupConcurrency int           `env:"SETUP_CONCURRENCY" envDefault:"256"`
	SetupQueue       int           `env:"SETUP_QUEUE" envDefault:"20000"`
	SetupTimeout     time.Duration `env:"SETUP_TIMEOUT" envDefault:"15s"`
	GatewayID        string        `env:"ID"`
	PresenceTTL      time.Duration `env:"PRESENCE_TTL" envDefault:"15s"`
	PresenceRefresh  time.Duration `env:"PRESENCE_REFRESH_INTERVAL" envDefault:"5s"`
	PresenceSweep    time.Duration `env:"PRESENCE_SWEEP_INTERVAL" envDefault:"5s"`
	DrainBatch       int           `env:"DRAIN_BATCH" envDefault:"200"`
	DrainInterval    time.Duration `env:"DRAIN_INTERVAL" envDefault:"100ms"`
	DrainTimeout     time.Duration `env:"DRAIN_TIMEOUT" envDefault:"15s"`
	ShutdownTimeout  time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"25s"`
	OTLPEndpoint     string        `env:"OTLP_ENDPOINT"`
	// TraceSampleRatio is the share of new traces exported when
	// OTLP_ENDPOINT is set: above 0, at most 1.
	TraceSampleRatio float64 `env:"TRACE_SAMPLE_RATIO" envDefault:"1"`
	LogLevel         string  `env:"LOG_LEVEL" envDefault:"info"`

	// SessionCacheTTL bounds how long a resolved session is reused without
	// asking the auth service (a logout drops it at once); 0: no cache.
	SessionCacheTTL time.Duration `env:"SESSION_CACHE_TTL" envDefault:"5s"`
	// SessionCacheSize bounds the sessions cached.
	SessionCacheSize int `env:"SESSION_CACHE_SIZE" envDefault:"100000"`
}

// TelemetrySettings returns the OTLP endpoint, trace sample ratio and log
// level.
func (c Config) TelemetrySettings() (otlpEndpoint string, sampleRatio float64, logLevel string) {
	return c.OTLPEndpoint, c.TraceSampleRatio, c.LogLevel
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if !(c.TraceSampleRatio > 0 && c.TraceSampleRatio <= 1) {
		errs = append(errs, errors.New("TRACE_SAMPLE_RATIO must be above 0 and at most 1"))
	}
	if _, err := subjects.New(c.SubjectPrefix); err != nil {
		errs = append(errs, fmt.Errorf("SUBJECT_PREFIX: %w", err))
	}
	if c.RedisPrefix == "" {
		errs = append(errs, errors.New("REDIS_PREFIX is empty"))
	}
	if c.SendQueue < 1 || c.SendQueue > 1<<16 {
		errs = append(errs, errors.New("SEND_QUEUE must be 1 to 65536"))
	}
	if c.AuthRatePerAddr < 1 || c.AuthRatePerUser < 1 || c.WriteRate < 1 {
		errs = append(errs, errors.New("AUTH_RATE_PER_ADDRESS, AUTH_RATE_PER_USERNAME and WRITE_RATE_PER_USER must be at least 1 a minute"))
	}
	if c.SendRate <= 0 || c.SendBurst < 1 || c.SendRefusals < 1 {
		errs = append(errs, errors.New("SEND_RATE must be positive, SEND_BURST and SEND_REFUSALS_BEFORE_CLOSE at least 1"))
	}
	if !gatewayID.MatchString(c.GatewayID) {
		errs = append(errs, errors.New("ID must be empty (random) or 1 to 64 letters, digits, '.', '_' or '-'"))
	}
	if c.PresenceRefresh*2 > c.PresenceTTL {
		errs = append(errs, errors.New("PRESENCE_REFRESH_INTERVAL must be at most half of PRESENCE_TTL"))
	}
	if c.SessionCacheTTL < 0 || c.SessionCacheTTL > time.Minute || c.SessionCacheSize < 1 {
		errs = append(errs, errors.New("SESSION_CACHE_TTL must be 0 (no cache) to 1m, SESSION_CACHE_SIZE at least 1"))
	}
	if c.DrainBatch < 1 {
		errs = append(errs, errors.New("DRAIN_BATCH must be at least 1"))
	}
	if c.SetupConcurrency < 1 || c.SetupQueue < 1 {
		errs = append(errs, errors.New("SETUP_CONCURRENCY and SETUP_QUEUE must be at least 1"))
	}
	for name, d := range map[string]time.Duration{
		"REQUEST_TIMEOUT": c.RequestTimeout, "WRITE_TIMEOUT": c.WriteTimeout, "PONG_WAIT": c.PongWait, "RESYNC_INTERVAL": c.ResyncInterval, "POSITION_CHECK_INTERVAL": c.PositionCheck,
		"TYPING_INTERVAL": c.TypingInterval, "PRESENCE_TTL": c.PresenceTTL, "PRESENCE_REFRESH_INTERVAL": c.PresenceRefresh, "PRESENCE_SWEEP_INTERVAL": c.PresenceSweep,
		"DRAIN_INTERVAL": c.DrainInterval, "DRAIN_TIMEOUT": c.DrainTimeout, "SHUTDOWN_TIMEOUT": c.ShutdownTimeout, "SETUP_TIMEOUT": c.SetupTimeout,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	if c.DrainTimeout >= c.ShutdownTimeout {
		errs = append(errs, errors.New("DRAIN_TIMEOUT must be shorter than SHUTDOWN_TIMEOUT"))
	}
	return errors.Join(errs...)
}

// gatewayID is what GATEWAY_ID may be: it goes into Redis key names.
var gatewayID = regexp.MustCompile(`^[A-Za-z0-9._-]{0,64}$`)

// Option changes how Run runs a gateway (for tests).
type Option func(*options)

type options struct {
	abandonPresence <-chan struct{}
}

// AbandonPresence makes the gateway stop renewing its presence lease, and
// write nothing more about presence, once ch is closed: to other gateways
// it then looks dead and its users go offline within PRESENCE_TTL +
// PRESENCE_SWEEP_INTERVAL. For tests of a gateway's death.
func AbandonPresence(ch <-chan struct{}) Option {
	return func(o *options) { o.abandonPresence = ch }
}

// Started reports the addresses a gateway listens on, once it listens.
type Started struct {
	HTTPAddr  string
	DebugAddr string
}

// Run runs a gateway until ctx is cancelled, then drains its websockets and
// shuts down within cfg.ShutdownTimeout. If started is not nil it receives
// the bound addresses (useful with port 0).
func Run(ctx context.Context, cfg Config, tel *telemetry.Telemetry, started chan<- Started, opts ...Option) error {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	log := tel.Logger
	subj, err := subjects.New(cfg.SubjectPrefix)
	if err != nil {
		return err
	}

	ropts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return fmt.Errorf("parse redis url: %w", err)
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	if err := redisotel.InstrumentTracing(rdb, redisotel.WithTracerProvider(tel.TracerProvider)); err != nil {
		return fmt.Errorf("redis tracing: %w", err)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis: %w", err)
	}

	nc, err := natsbus.Connect(cfg.NATSURL, "gateway", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	busMetrics, err := natsbus.NewMetrics(tel.Registry, subj.Prefix())
	if err != nil {
		return err
	}
	up := upstream.New(natsbus.NewClient(nc, tel.TracerProvider, natsbus.WithMetrics(busMetrics)), subj, cfg.RequestTimeout)
	// The HTTP API resolves sessions through a short cache; the websocket
	// server's checks ask the auth service (a new websocket's check may
	// stand on the upgrade's lookup when the auth service itself answered
	// it, see CachedSessions.ResolveSession).
	cached := upstream.CacheSessions(up, cfg.SessionCacheSize, cfg.SessionCacheTTL)

	hubCtx, stopHub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHub()
	h := hub.New(hubCtx, rdb, cfg.RedisPrefix, log, tel.TracerProvider, tel.Registry)
	wss := ws.NewServer(ws.Config{SendQueue: cfg.SendQueue, WriteTimeout: cfg.WriteTimeout, PongWait: cfg.PongWait,
		SendRate: cfg.SendRate, SendBurst: cfg.SendBurst, SendRefusals: cfg.SendRefusals, TypingInterval: cfg.TypingInterval,
		SetupConcurrency: cfg.SetupConcurrency, SetupQueue: cfg.SetupQueue, SetupTimeout: cfg.SetupTimeout},
		up, h, log, tel.TracerProvider, tel.Registry)
	// Drain stops it on a normal shutdown; this covers a start that fails.
	defer wss.Close()
	tracker, err := presence.New(rdb, presence.Config{Prefix: cfg.RedisPrefix, GatewayID: cfg.GatewayID,
		TTL: cfg.PresenceTTL, Refresh: cfg.PresenceRefresh, Sweep: cfg.PresenceSweep}, log)
	if err != nil {
		return err
	}
	wss.UsePresence(tracker)
	log.InfoContext(ctx, "presence", "gateway_id", tracker.GatewayID())

	ready := debugsrv.NewReadiness(map[string]debugsrv.Check{
		"redis": func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		"nats":  natsbus.Check(nc),
	})
	events, err := busevents.Subscribe(hubCtx, nc, subj, revokeCached{wss, cached}, log, tel.TracerProvider)
	if err != nil {
		return err
	}
	// Events missed while NATS was away are caught up by a resync when it
	// comes back, and by a periodic one.
	resync := make(chan struct{}, 1)
	nc.SetReconnectHandler(func(c *nats.Conn) {
		log.Info("nats reconnected; checking every connection", "url", c.ConnectedUrlRedacted())
		select {
		case resync <- struct{}{}:
		default:
		}
	})
	gin.SetMode(gin.ReleaseMode)
	engine := gin.New()
	// Client addresses (for rate limits) come from X-Forwarded-For only
	// when the request comes through a trusted proxy.
	if err := engine.SetTrustedProxies(cfg.TrustedProxies); err != nil {
		return fmt.Errorf("TRUSTED_PROXIES: %w", err)
	}
	engine.RemoteIPHeaders = []string{"X-Forwarded-For"}
	limits := httpapi.Limits{
		PerAddress:  ratelimit.PerMinute(rdb, cfg.RedisPrefix, cfg.AuthRatePerAddr),
		PerUsername: ratelimit.PerMinute(rdb, cfg.RedisPrefix, cfg.AuthRatePerUser),
		PerUser:     ratelimit.PerMinute(rdb, cfg.RedisPrefix, cfg.WriteRate),
	}
	httpapi.New(log, httpapi.Config{AllowedOrigins: cfg.AllowedOrigins, SecureCookies: cfg.SecureCookies, WebDir: cfg.WebDir},
		cached, wss, limits, ready, tel.TracerProvider, tel.Propagator).Routes(engine)
	// Hijacked websockets leave these timeouts behind: gorilla clears the
	// deadlines at the upgrade and the connection sets its own.
	httpSrv := &http.Server{
		Handler:           engine,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
	}
	debug := debugsrv.NewServer(cfg.DebugAddr, ready, tel.Registry)

	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
	}
	debugLn, err := net.Listen("tcp", cfg.DebugAddr)
	if err != nil {
		httpLn.Close()
		return fmt.Errorf("listen %s: %w", cfg.DebugAddr, err)
	}
	log.InfoContext(ctx, "gateway started", "http_addr", httpLn.Addr().String(), "debug_addr", debugLn.Addr().String())
	if started != nil {
		started <- Started{HTTPAddr: httpLn.Addr().String(), DebugAddr: debugLn.Addr().String()}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return h.Run(hubCtx) })
	// Presence leaves Redis (announcing this gateway's users offline) when
	// hubCtx ends, after the websockets have drained.
	g.Go(func() error {
		return tracker.Run(hubCtx, func(ch presence.Change) { wss.PresenceChanged(ch.UserID, ch.Username, ch.Online) },
			func() { wss.RefreshViews(hubCtx) }, nil)
	})
	if o.abandonPresence != nil {
		g.Go(func() error {
			select {
			case <-o.abandonPresence:
				log.Warn("presence abandoned: the lease is left to expire")
				tracker.Abandon()
			case <-gctx.Done():
			}
			return nil
		})
	}
	g.Go(func() error {
		tick := time.NewTicker(cfg.PositionCheck)
		defer tick.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-tick.C:
				cctx, cancel := context.WithTimeout(gctx, cfg.PositionCheck)
				wss.CheckPositions(cctx)
				cancel()
			}
		}
	})
	g.Go(func() error {
		tick := time.NewTicker(cfg.ResyncInterval)
		defer tick.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-tick.C:
			case <-resync:
				// After a NATS outage the other services resubscribe
				// too: give them a moment, and spread the replicas out.
				select {
				case <-gctx.Done():
					return nil
				case <-time.After(time.Second + rand.N(4*time.Second)):
				}
			}
			if gctx.Err() != nil {
				return nil
			}
			rctx, cancel := context.WithTimeout(gctx, cfg.ResyncInterval/2)
			wss.Resync(rctx)
			cancel()
		}
	})
	g.Go(func() error {
		if err := httpSrv.Serve(httpLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := debug.Serve(debugLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("debug server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", "connections", wss.Count())
		ready.StartDrain()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		// Stop accepting while the websockets drain: Shutdown does not wait
		// for hijacked connections, Drain does.
		var sg errgroup.Group
		sg.Go(func() error { return httpSrv.Shutdown(sctx) })
		sg.Go(func() error {
			dctx, cancel := context.WithTimeout(sctx, cfg.DrainTimeout)
			defer cancel()
			wss.Drain(dctx, cfg.DrainBatch, cfg.DrainInterval)
			return nil
		})
		err := sg.Wait()
		stopHub()
		// The drain lets the event handlers finish; then the chat events
		// they started are waited for.
		if derr := natsbus.Drain(sctx, nc); derr != nil {
			log.Warn("nats drain", "err", derr)
		}
		events.Wait()
		if derr := debug.Shutdown(sctx); derr != nil {
			err = errors.Join(err, derr)
		}
		log.Info("shut down")
		return err
	})
	return g.Wait()
}

// revokeCached counts a revoked session and drops it from the gateway's
// session cache before it closes the session's websockets (the order is
// CachedSessions.RevokeSession's), so that once they are closed no request
// of this replica resolves the session any more, and no new websocket
// stands on a lookup the revocation overtook.
type revokeCached struct {
	*ws.Server
	up *upstream.CachedSessions
}

func (r revokeCached) RevokeSession(sessionID string) (closed int) {
	r.up.RevokeSession(sessionID, func() { closed = r.Server.RevokeSession(sessionID) })
	return closed
}

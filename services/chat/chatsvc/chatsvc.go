// Package chatsvc wires the chat service: its configuration and Run, which
// main calls and the end-to-end tests start in-process.
package chatsvc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/communications/communications/libs/debugsrv"
	"github.com/communications/communications/libs/grantcache"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/services/chat/internal/chats"
	"github.com/communications/communications/services/chat/internal/chatstore"
	"github.com/communications/communications/services/chat/internal/historydir"
	"github.com/communications/communications/services/chat/internal/msgstream"
	"github.com/communications/communications/services/chat/internal/natsapi"
	"github.com/communications/communications/services/chat/internal/unread"
	"github.com/communications/communications/services/chat/internal/userdir"
)

// EnvPrefix prefixes every environment variable of the service.
const EnvPrefix = "CHAT_"

// Config is the chat service's configuration, read from CHAT_* variables.
type Config struct {
	NATSURL         string        `env:"NATS_URL" envDefault:"nats://127.0.0.1:4222"`
	PostgresURL     string        `env:"POSTGRES_URL" envDefault:"postgres://postgres@127.0.0.1:5432/communications?sslmode=disable"`
	PostgresMaxConn int32         `env:"POSTGRES_MAX_CONNS" envDefault:"16"`
	SubjectPrefix   string        `env:"SUBJECT_PREFIX" envDefault:"comms"`
	DebugAddr       string        `env:"DEBUG_ADDR" envDefault:"127.0.0.1:9102"`
	RequestTimeout  time.Duration `env:"REQUEST_TIMEOUT" envDefault:"5s"`
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"20s"`
	StreamReplicas  int           `env:"STREAM_REPLICAS" envDefault:"1"`
	StreamMaxBytes  int64         `env:"STREAM_MAX_BYTES" envDefault:"1073741824"`
	DuplicateWindow time.Duration `env:"DUPLICATE_WINDOW" envDefault:"2m"`
	PublishInFlight int           `env:"PUBLISH_IN_FLIGHT" envDefault:"4"`
	// MemberCacheTTL bounds how long a granted membership is reused for
	// further sends without a query (0: every send queries); a removal
	// drops it at once on this replica, and on the others when its chat
	// event (subjects.ChatEvents) arrives.
	MemberCacheTTL  time.Duration `env:"MEMBER_CACHE_TTL" envDefault:"30s"`
	MemberCacheSize int           `env:"MEMBER_CACHE_SIZE" envDefault:"200000"`
	OTLPEndpoint    string        `env:"OTLP_ENDPOINT"`
	// TraceSampleRatio is the share of new traces exported when
	// OTLP_ENDPOINT is set: above 0, at most 1.
	TraceSampleRatio float64 `env:"TRACE_SAMPLE_RATIO" envDefault:"1"`
	LogLevel         string  `env:"LOG_LEVEL" envDefault:"info"`
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
	if c.RequestTimeout <= 0 || c.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("REQUEST_TIMEOUT and SHUTDOWN_TIMEOUT must be positive"))
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		errs = append(errs, errors.New("STREAM_REPLICAS must be 1 to 5"))
	}
	if c.MemberCacheTTL < 0 || c.MemberCacheTTL > 5*time.Minute || c.MemberCacheSize < 1 {
		errs = append(errs, errors.New("MEMBER_CACHE_TTL must be 0 (no cache) to 5m, MEMBER_CACHE_SIZE at least 1"))
	}
	if c.PublishInFlight < 1 || c.PublishInFlight > 32 {
		// nats-server takes at most 50 atomic batches in flight per
		// stream, from all chat replicas together.
		errs = append(errs, errors.New("PUBLISH_IN_FLIGHT must be 1 to 32"))
	}
	if c.StreamMaxBytes < 1<<20 {
		errs = append(errs, errors.New("STREAM_MAX_BYTES must be at least 1 MiB"))
	}
	return errors.Join(errs...)
}

// Run runs the chat service until ctx is cancelled, then shuts down within
// cfg.ShutdownTimeout.
func Run(ctx context.Context, cfg Config, tel *telemetry.Telemetry) error {
	log := tel.Logger
	subj, err := subjects.New(cfg.SubjectPrefix)
	if err != nil {
		return err
	}

	pool, err := pgdb.Open(ctx, cfg.PostgresURL, cfg.PostgresMaxConn, tel.TracerProvider)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pgdb.Migrate(ctx, pool, chatstore.Migrations(), chatstore.MigrationTable, log); err != nil {
		return err
	}

	nc, err := natsbus.Connect(cfg.NATSURL, "chat", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	stream, err := msgstream.Ensure(ctx, nc, subj, msgstream.Config{
		Replicas: cfg.StreamReplicas, MaxBytes: cfg.StreamMaxBytes, DuplicateWindow: cfg.DuplicateWindow,
		PublishInFlight: cfg.PublishInFlight,
	})
	if err != nil {
		return err
	}

	// Member usernames are resolved by the auth service; changes of chats
	// are announced to the gateways on subjects.ChatEvents.
	// The targets of edits and deletions, and the sequence numbers of
	// retried messages, are asked of the history service.
	busMetrics, err := natsbus.NewMetrics(tel.Registry, subj.Prefix())
	if err != nil {
		return err
	}
	bus := natsbus.NewClient(nc, tel.TracerProvider, natsbus.WithMetrics(busMetrics))
	users := userdir.New(bus, subj)
	entries := historydir.New(bus, subj)
	store := chatstore.New(pool)
	events := natsapi.NewEvents(nc, subj)
	// Granted memberships are remembered; removals through other
	// replicas arrive as their chat events.
	var members chats.MemberCache
	if cfg.MemberCacheTTL > 0 {
		cache := grantcache.New(grantcache.CheckerFunc(chats.StoreChecker(store)), grantcache.Options{
			Size: cfg.MemberCacheSize, TTL: cfg.MemberCacheTTL, Timeout: cfg.RequestTimeout, IsRefusal: chats.IsRefusal,
		})
		if err := cache.Subscribe(nc, subj.ChatEvents()); err != nil {
			return err
		}
		members = cache
	}
	svc := chats.NewService(store, stream, entries, users, events, log, chats.Config{MemberCache: members})
	// Read positions are kept here; unread counts are asked of the history
	// service; moved positions are announced on subjects.ChatEventsRead.
	reads := chats.NewReads(svc, store, unread.New(bus, subj), events, log)
	srv := natsbus.NewServer(nc, tel.TracerProvider, log, cfg.RequestTimeout, natsbus.WithMetrics(busMetrics))
	// Handlers run on a context that outlives ctx, so that requests in
	// flight at shutdown finish while the connection drains.
	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	if _, err := natsapi.Register(handlerCtx, srv, subj, svc, reads); err != nil {
		return err
	}
	// Readiness must not pass before the server has the subscriptions.
	if err := nc.FlushTimeout(cfg.RequestTimeout); err != nil {
		return fmt.Errorf("flush nats subscriptions: %w", err)
	}

	ready := debugsrv.NewReadiness(map[string]debugsrv.Check{
		"postgres": pool.Ping,
		"nats":     natsbus.Check(nc),
	})
	debug := debugsrv.NewServer(cfg.DebugAddr, ready, tel.Registry)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := debug.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("debug server: %w", err)
		}
		return nil
	})
	log.InfoContext(ctx, "chat service started", "debug_addr", cfg.DebugAddr, "subject_prefix", cfg.SubjectPrefix)
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down")
		ready.StartDrain()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		// Requests received so far are answered before the connection
		// drains.
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("nats requests at shutdown", "err", err)
		}
		if err := natsbus.Drain(sctx, nc); err != nil {
			log.Warn("nats drain", "err", err)
		}
		return debug.Shutdown(sctx)
	})
	return g.Wait()
}

// Package historysvc wires the history service: its configuration and Run,
// which main calls and the end-to-end tests start in-process.
package historysvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/communications/communications/libs/debugsrv"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/services/history/internal/fanoutpub"
	"github.com/communications/communications/services/history/internal/history"
	"github.com/communications/communications/services/history/internal/msgstore"
	"github.com/communications/communications/services/history/internal/natsapi"
	"github.com/communications/communications/services/history/internal/writer"
)

// EnvPrefix prefixes every environment variable of the service.
const EnvPrefix = "HISTORY_"

// Config is the history service's configuration, read from HISTORY_*
// variables.
type Config struct {
	NATSURL         string        `env:"NATS_URL" envDefault:"nats://127.0.0.1:4222"`
	PostgresURL     string        `env:"POSTGRES_URL" envDefault:"postgres://postgres@127.0.0.1:5432/communications?sslmode=disable"`
	PostgresMaxConn int32         `env:"POSTGRES_MAX_CONNS" envDefault:"16"`
	RedisURL        string        `env:"REDIS_URL" envDefault:"redis://127.0.0.1:6379/0"`
	RedisPrefix     string        `env:"REDIS_PREFIX" envDefault:"comms"`
	SubjectPrefix   string        `env:"SUBJECT_PREFIX" envDefault:"comms"`
	DebugAddr       string        `env:"DEBUG_ADDR" envDefault:"127.0.0.1:9103"`
	RequestTimeout  time.Duration `env:"REQUEST_TIMEOUT" envDefault:"5s"`
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"20s"`
	BatchSize       int           `env:"BATCH_SIZE" envDefault:"2000"`
	BatchWait       time.Duration `env:"BATCH_WAIT" envDefault:"10ms"`
	// LeaderTTL is how long the writers' lock outlives its holder's last
	// renewal: a standby replica takes over within about this after the
	// storing one dies (at once after a clean shutdown).
	LeaderTTL    time.Duration `env:"LEADER_TTL" envDefault:"5s"`
	OTLPEndpoint string        `env:"OTLP_ENDPOINT"`
	// TraceSampleRatio is the share of new traces exported when
	// OTLP_ENDPOINT is set: above 0, at most 1.
	TraceSampleRatio float64 `env:"TRACE_SAMPLE_RATIO" envDefault:"1"`
	LogLevel         string  `env:"LOG_LEVEL" envDefault:"info"`

	// AccessCacheTTL bounds how long a granted read access is reused
	// without asking the chat service (a removal from the chat drops it at
	// once); 0: no cache.
	AccessCacheTTL time.Duration `env:"ACCESS_CACHE_TTL" envDefault:"5s"`
	// AccessCacheSize bounds the granted accesses cached.
	AccessCacheSize int `env:"ACCESS_CACHE_SIZE" envDefault:"100000"`
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
	if c.AccessCacheTTL < 0 || c.AccessCacheTTL > time.Minute || c.AccessCacheSize < 1 {
		errs = append(errs, errors.New("ACCESS_CACHE_TTL must be 0 (no cache) to 1m, ACCESS_CACHE_SIZE at least 1"))
	}
	if _, err := redis.ParseURL(c.RedisURL); err != nil {
		errs = append(errs, fmt.Errorf("REDIS_URL: %w", err))
	}
	if c.RedisPrefix == "" || strings.ContainsAny(c.RedisPrefix, " \t\r\n") {
		errs = append(errs, errors.New("REDIS_PREFIX must be non-empty without whitespace"))
	}
	if c.PostgresMaxConn < 0 {
		errs = append(errs, errors.New("POSTGRES_MAX_CONNS must not be negative"))
	}
	if c.RequestTimeout <= 0 || c.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("REQUEST_TIMEOUT and SHUTDOWN_TIMEOUT must be positive"))
	}
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		errs = append(errs, errors.New("BATCH_SIZE must be 1 to 10000"))
	}
	if c.BatchWait < time.Millisecond || c.BatchWait > 10*time.Second {
		errs = append(errs, errors.New("BATCH_WAIT must be 1ms to 10s"))
	}
	if c.LeaderTTL < 300*time.Millisecond || c.LeaderTTL > 5*time.Minute {
		errs = append(errs, errors.New("LEADER_TTL must be 300ms to 5m"))
	}
	return errors.Join(errs...)
}

// Run runs the history service until ctx is cancelled, then shuts down
// within cfg.ShutdownTimeout.
func Run(ctx context.Context, cfg Config, tel *telemetry.Telemetry) error {
	log := tel.Logger
	setMemoryLimit(log)
	subj, err := subjects.New(cfg.SubjectPrefix)
	if err != nil {
		return err
	}

	pool, err := pgdb.Open(ctx, cfg.PostgresURL, cfg.PostgresMaxConn, tel.TracerProvider)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pgdb.Migrate(ctx, pool, msgstore.Migrations(), msgstore.MigrationTable, log); err != nil {
		return err
	}

	ropts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return fmt.Errorf("parse redis url: %w", err)
	}
	rdb := redis.NewClient(ropts)
	defer func() {
		if err := rdb.Close(); err != nil {
			log.Warn("close redis", "err", err)
		}
	}()
	// The writer's fanout pipelines (hundreds of PUBLISH a batch) have a
	// span of the writer's own: redisotel would format every command of
	// them into a string for its span, traced or not (a tenth of the
	// writer's CPU while it drains a backlog).
	if err := redisotel.InstrumentTracing(rdb, redisotel.WithTracerProvider(tel.TracerProvider),
		redisotel.WithCallerEnabled(false),
		redisotel.WithCommandsFilter(func([]redis.Cmder) bool { return true })); err != nil {
		return fmt.Errorf("instrument redis: %w", err)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis: %w", err)
	}

	nc, err := natsbus.Connect(cfg.NATSURL, "history", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	store := msgstore.New(pool)
	w, err := writer.New(js, store, fanoutpub.New(rdb, cfg.RedisPrefix), writer.Config{
		Stream:    subj.MessagesStream(),
		Lock:      subj.HistoryWriterLock(),
		BatchSize: cfg.BatchSize,
		BatchWait: cfg.BatchWait,
		LeaderTTL: cfg.LeaderTTL,
	}, log, tel.TracerProvider, tel.Registry)
	if err != nil {
		return err
	}

	busMetrics, err := natsbus.NewMetrics(tel.Registry, subj.Prefix())
	if err != nil {
		return err
	}
	srv := natsbus.NewServer(nc, tel.TracerProvider, log, cfg.RequestTimeout, natsbus.WithMetrics(busMetrics))
	// Handlers run on a context that outlives ctx, so that requests in
	// flight at shutdown finish while the connection drains.
	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	var access natsapi.Access = natsapi.ChatAccess{Bus: natsbus.NewClient(nc, tel.TracerProvider, natsbus.WithMetrics(busMetrics)), Subj: subj}
	if cfg.AccessCacheTTL > 0 {
		if access, err = natsapi.NewCachedAccess(nc, subj, access, cfg.AccessCacheSize, cfg.AccessCacheTTL, cfg.RequestTimeout); err != nil {
			return err
		}
	}
	if _, err := natsapi.Register(handlerCtx, srv, subj, history.NewService(store), access); err != nil {
		return err
	}

	ready := debugsrv.NewReadiness(map[string]debugsrv.Check{
		"postgres": pool.Ping,
		"redis":    func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		"nats":     natsbus.Check(nc),
	})
	debug := debugsrv.NewServer(cfg.DebugAddr, ready, tel.Registry)

	g, gctx := errgroup.WithContext(ctx)
	writerDone := make(chan struct{})
	g.Go(func() error {
		defer close(writerDone)
		return w.Run(gctx)
	})
	g.Go(func() error { return w.WatchLag(gctx) })
	g.Go(func() error {
		if err := debug.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("debug server: %w", err)
		}
		return nil
	})
	log.InfoContext(ctx, "history service started", "debug_addr", cfg.DebugAddr, "subject_prefix", cfg.SubjectPrefix)
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down")
		ready.StartDrain()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		// The writer finishes its current batch (store, publish) and
		// releases the writers' lock before NATS is drained.
		select {
		case <-writerDone:
		case <-sctx.Done():
			log.Warn("history writer did not stop in time")
		}
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

// setMemoryLimit sets Go's soft memory limit to 90 % of the cgroup's
// memory limit (a container's), unless GOMEMLIMIT is set or AUTOMEMLIMIT
// is off or another ratio. The service runs with GOGC=400 (README,
// "Runtime settings"), so its heap may grow to five times what is live;
// the soft limit makes the collector run earlier as the heap nears the
// container's limit.
func setMemoryLimit(log *slog.Logger) {
	limit, err := memlimit.Set(memlimit.WithLogger(log))
	switch {
	case err != nil:
		log.Warn("Go memory limit not set from the cgroup", "err", err)
	case limit != math.MaxInt64:
		log.Info("Go memory limit", "bytes", limit)
	}
}

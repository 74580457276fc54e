// Package authsvc wires the auth service: its configuration and Run, which
// main calls and the end-to-end tests start in-process.
package authsvc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/communications/communications/libs/debugsrv"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/services/auth/internal/accounts"
	"github.com/communications/communications/services/auth/internal/authevents"
	"github.com/communications/communications/services/auth/internal/authstore"
	"github.com/communications/communications/services/auth/internal/natsapi"
)

// EnvPrefix prefixes every environment variable of the service.
const EnvPrefix = "AUTH_"

// pruneInterval is how often expired sessions are deleted.
const pruneInterval = time.Hour

// Config is the auth service's configuration, read from AUTH_* variables.
type Config struct {
	NATSURL             string        `env:"NATS_URL" envDefault:"nats://127.0.0.1:4222"`
	PostgresURL         string        `env:"POSTGRES_URL" envDefault:"postgres://postgres@127.0.0.1:5432/communications?sslmode=disable"`
	PostgresMaxConn     int32         `env:"POSTGRES_MAX_CONNS" envDefault:"8"`
	SubjectPrefix       string        `env:"SUBJECT_PREFIX" envDefault:"comms"`
	DebugAddr           string        `env:"DEBUG_ADDR" envDefault:"127.0.0.1:9101"`
	RequestTimeout      time.Duration `env:"REQUEST_TIMEOUT" envDefault:"5s"`
	ShutdownTimeout     time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"20s"`
	SessionTTL          time.Duration `env:"SESSION_TTL" envDefault:"720h"`
	MaxConcurrentHashes int           `env:"MAX_CONCURRENT_HASHES" envDefault:"2"`
	OTLPEndpoint        string        `env:"OTLP_ENDPOINT"`
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
	if c.PostgresMaxConn < 0 {
		errs = append(errs, errors.New("POSTGRES_MAX_CONNS must not be negative"))
	}
	if c.RequestTimeout <= 0 || c.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("REQUEST_TIMEOUT and SHUTDOWN_TIMEOUT must be positive"))
	}
	if c.SessionTTL < time.Minute {
		errs = append(errs, errors.New("SESSION_TTL must be at least 1m"))
	}
	if c.MaxConcurrentHashes < 1 || c.MaxConcurrentHashes > 256 {
		errs = append(errs, errors.New("MAX_CONCURRENT_HASHES must be 1 to 256"))
	}
	return errors.Join(errs...)
}

// Run runs the auth service until ctx is cancelled, then shuts down within
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
	if err := pgdb.Migrate(ctx, pool, authstore.Migrations(), authstore.MigrationTable, log); err != nil {
		return err
	}

	nc, err := natsbus.Connect(cfg.NATSURL, "auth", log)
	if err != nil {
		return err
	}
	defer nc.Close()

	// Events go out on the connection that answers the requests, so an
	// event reaches NATS before the reply to the request that caused it.
	svc, err := accounts.NewService(authstore.New(pool), authevents.New(nc, subj), log, accounts.Config{
		SessionTTL: cfg.SessionTTL, MaxConcurrentHashes: cfg.MaxConcurrentHashes,
	})
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
	if _, err := natsapi.Register(handlerCtx, srv, subj, svc); err != nil {
		return err
	}
	// The subscriptions are live on the server before readiness can pass.
	if err := nc.Flush(); err != nil {
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
	g.Go(func() error {
		tick := time.NewTicker(pruneInterval)
		defer tick.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-tick.C:
				if n, err := svc.PruneSessions(gctx); err != nil {
					log.WarnContext(gctx, "prune sessions", "err", err)
				} else if n > 0 {
					log.InfoContext(gctx, "pruned expired sessions", "count", n)
				}
			}
		}
	})
	log.InfoContext(ctx, "auth service started", "debug_addr", cfg.DebugAddr, "subject_prefix", cfg.SubjectPrefix)
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

// Package svcmain is the main function of every service: it reads the
// service's Config from the environment, sets up telemetry, logs the
// configuration once with secrets masked, runs the service until SIGINT or
// SIGTERM, and turns a failure into a log line and exit status 1.
package svcmain

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/communications/communications/libs/config"
	"github.com/communications/communications/libs/telemetry"
)

// Config is what svcmain needs from a service's configuration.
type Config interface {
	// TelemetrySettings returns the OTLP endpoint (empty: no export),
	// the share of new traces sampled (0 to 1) and the log level.
	TelemetrySettings() (otlpEndpoint string, sampleRatio float64, logLevel string)
}

// TelemetryFlushTimeout bounds the telemetry flush after the service has
// stopped: a deployment's grace period must exceed the service's shutdown
// timeout plus this.
const TelemetryFlushTimeout = 5 * time.Second

// Main runs a service named name whose environment variables start with
// prefix and returns the process's exit status. Use it as
//
//	func main() { os.Exit(svcmain.Main("chat", chatsvc.EnvPrefix, chatsvc.Run)) }
func Main[C Config](name, prefix string, run func(context.Context, C, *telemetry.Telemetry) error) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runService(ctx, name, prefix, run); err != nil {
		slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error(name+" failed", "service", name, "err", err)
		return 1
	}
	return 0
}

func runService[C Config](ctx context.Context, name, prefix string, run func(context.Context, C, *telemetry.Telemetry) error) error {
	cfg, err := config.Load[C](prefix)
	if err != nil {
		return err
	}
	endpoint, ratio, level := cfg.TelemetrySettings()
	tel, err := telemetry.New(ctx, telemetry.Config{ServiceName: name, OTLPEndpoint: endpoint, SampleRatio: ratio, LogLevel: level}, os.Stdout)
	if err != nil {
		return err
	}
	defer func() {
		// The flush gets its own deadline: an unreachable collector must
		// not hold the process past the pod's grace period.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), TelemetryFlushTimeout)
		defer cancel()
		if err := tel.Shutdown(sctx); err != nil {
			tel.Logger.Warn("telemetry shutdown", "err", err)
		}
	}()
	tel.Logger.Info("config", "config", config.LogValue(cfg))
	if err := run(ctx, cfg, tel); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	tel.Logger.Info("stopped")
	return nil
}

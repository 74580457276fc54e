// Command auth runs the auth service: user accounts, password checks and
// sessions.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/communications/communications/libs/config"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/services/auth/authsvc"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error("auth service failed", "service", "auth", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	cfg, err := config.Load[authsvc.Config](authsvc.EnvPrefix)
	if err != nil {
		return err
	}
	tel, err := telemetry.New(ctx, telemetry.Config{ServiceName: "auth", OTLPEndpoint: cfg.OTLPEndpoint, LogLevel: cfg.LogLevel}, os.Stdout)
	if err != nil {
		return err
	}
	defer func() {
		if err := tel.Shutdown(context.WithoutCancel(ctx)); err != nil {
			tel.Logger.Warn("telemetry shutdown", "err", err)
		}
	}()
	tel.Logger.Info("config", "config", config.LogValue(cfg))
	if err := authsvc.Run(ctx, cfg, tel); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	return nil
}

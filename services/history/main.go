// Command history runs the history service: the history writer, which stores
// the accepted messages of the message stream with their per-chat sequence
// numbers and publishes them for fanout, and history page reads.
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
	"github.com/communications/communications/services/history/historysvc"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error("history service failed", "service", "history", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	cfg, err := config.Load[historysvc.Config](historysvc.EnvPrefix)
	if err != nil {
		return err
	}
	tel, err := telemetry.New(ctx, telemetry.Config{ServiceName: "history", OTLPEndpoint: cfg.OTLPEndpoint, LogLevel: cfg.LogLevel}, os.Stdout)
	if err != nil {
		return err
	}
	defer func() {
		if err := tel.Shutdown(context.WithoutCancel(ctx)); err != nil {
			tel.Logger.Warn("telemetry shutdown", "err", err)
		}
	}()
	tel.Logger.Info("config", "config", config.LogValue(cfg))
	if err := historysvc.Run(ctx, cfg, tel); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return nil
}

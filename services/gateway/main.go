// Command gateway runs a gateway replica: the web app, the HTTP API and the
// websocket connections, routed to the other services over NATS.
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
	"github.com/communications/communications/services/gateway/gatewaysvc"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error("gateway failed", "service", "gateway", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	cfg, err := config.Load[gatewaysvc.Config](gatewaysvc.EnvPrefix)
	if err != nil {
		return err
	}
	tel, err := telemetry.New(ctx, telemetry.Config{ServiceName: "gateway", OTLPEndpoint: cfg.OTLPEndpoint, LogLevel: cfg.LogLevel}, os.Stdout)
	if err != nil {
		return err
	}
	defer func() {
		if err := tel.Shutdown(context.WithoutCancel(ctx)); err != nil {
			tel.Logger.Warn("telemetry shutdown", "err", err)
		}
	}()
	tel.Logger.Info("config", "config", config.LogValue(cfg))
	if err := gatewaysvc.Run(ctx, cfg, tel, nil); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	return nil
}

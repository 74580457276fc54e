// Command chat runs the chat service: chats, membership, permissions and
// accepting messages into the durable message stream.
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
	"github.com/communications/communications/services/chat/chatsvc"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error("chat service failed", "service", "chat", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	cfg, err := config.Load[chatsvc.Config](chatsvc.EnvPrefix)
	if err != nil {
		return err
	}
	tel, err := telemetry.New(ctx, telemetry.Config{ServiceName: "chat", OTLPEndpoint: cfg.OTLPEndpoint, LogLevel: cfg.LogLevel}, os.Stdout)
	if err != nil {
		return err
	}
	defer func() {
		if err := tel.Shutdown(context.WithoutCancel(ctx)); err != nil {
			tel.Logger.Warn("telemetry shutdown", "err", err)
		}
	}()
	tel.Logger.Info("config", "config", config.LogValue(cfg))
	if err := chatsvc.Run(ctx, cfg, tel); err != nil {
		return fmt.Errorf("chat: %w", err)
	}
	return nil
}

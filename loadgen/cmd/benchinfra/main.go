// Command benchinfra starts the Redis and NATS servers that the baselines
// (redis-benchmark, nats bench) run against, as `devstack run` starts them
// (libs/devstack: Redis with an append-only file, nats-server with
// JetStream file storage and sync_interval: always), on free loopback
// ports with their data in -state, which it empties first. Once both are
// ready it writes -env, a file of shell variables (REDIS_PORT, REDIS_PID,
// NATS_URL, NATS_PID) for scripts/baselines, and stops both on SIGINT or
// SIGTERM.
//
//	benchinfra -state .state/baselines/infra -env .state/baselines/infra.env -nats-server .state/bin/nats-server
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/communications/communications/libs/devstack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "benchinfra:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("benchinfra", flag.ContinueOnError)
	state := fs.String("state", filepath.Join(".state", "baselines", "infra"), "data folder (emptied first)")
	envPath := fs.String("env", filepath.Join(".state", "baselines", "infra.env"), "shell variables written once the servers are ready")
	natsBin := fs.String("nats-server", "", "nats-server binary (default: on PATH)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := os.RemoveAll(*state); err != nil {
		return err
	}
	rd, err := devstack.StartRedis(ctx, filepath.Join(*state, "redis"), devstack.RedisOptions{})
	if err != nil {
		return err
	}
	defer rd.Stop()
	nc, err := devstack.StartNATS(ctx, filepath.Join(*state, "nats"), devstack.NATSOptions{Binary: *natsBin})
	if err != nil {
		return err
	}
	defer nc.Stop()
	env := fmt.Sprintf("REDIS_PORT=%d\nREDIS_PID=%d\nNATS_URL=%s\nNATS_PID=%d\n", rd.Port, rd.Pid(), nc.URL(), nc.Pid())
	if err := os.WriteFile(*envPath, []byte(env), 0o644); err != nil {
		return err
	}
	defer os.Remove(*envPath)
	fmt.Print(env)
	select {
	case <-ctx.Done():
	case <-rd.Done():
		return fmt.Errorf("redis exited: %v", rd.Err())
	case <-nc.Done():
		return fmt.Errorf("nats-server exited: %v", nc.Err())
	}
	return nil
}

// Command devstack runs communications on one machine: `devstack run`
// starts PostgreSQL, Redis and NATS (JetStream) on free loopback ports with
// state under .state/run (or -state), builds and starts auth, chat, history
// and two gateway replicas, writes their URLs and process ids to
// stack.json in the state folder, prints them and stops everything on
// Ctrl-C (with -restart-gateways it starts a gateway that died again; the
// environment reaches every service, so GATEWAY_... and other
// settings may be given to it);
// `devstack test` starts throwaway PostgreSQL and Redis servers under
// .state/test and runs every module's tests against them. scripts/run and
// scripts/test install what is missing and call it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: devstack run|test [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	root := fs.String("root", ".", "repository root")
	natsBin := fs.String("nats-server", "", "nats-server binary (default: on PATH)")
	switch args[0] {
	case "run":
		state := fs.String("state", filepath.Join(".state", "run"), "state folder (data, logs, stack.json), relative to -root")
		restart := fs.Bool("restart-gateways", false, "start a gateway that exits again instead of stopping the stack (for the load generator's storm)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return runStack(ctx, *root, *state, *natsBin, *restart)
	case "test":
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return runTests(ctx, *root, *natsBin, fs.Args())
	}
	return fmt.Errorf("unknown command %q: want run or test", args[0])
}

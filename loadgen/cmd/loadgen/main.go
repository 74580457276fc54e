// Command loadgen drives a running communications stack (normally started
// by `devstack run`, which describes it in stack.json) and reports
// delivery, latency, CPU and memory figures as a table and as JSON.
//
//	loadgen -stack .state/run/stack.json fanout [-chats 100 -members 50 -rate 1000 -duration 30s]
//	loadgen -stack .state/run/stack.json idle [-conns 15000]
//	loadgen -gateways http://127.0.0.1:PORT -pids wsbroadcast=PID broadcast [-rooms 100 -members 50 -rate 1000]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/communications/communications/libs/devstack"
	"github.com/communications/communications/loadgen/scenario"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == scenario.IdleWorkerCommand {
		// A worker started by the idle scenario's -procs.
		return scenario.RunIdleWorker(ctx, os.Stdin, os.Stdout)
	}
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	stackPath := fs.String("stack", "", "stack.json written by `devstack run` (gateways, debug URLs, pids)")
	gateways := fs.String("gateways", "", "comma-separated gateway base URLs (instead of -stack)")
	pids := fs.String("pids", "", "comma-separated NAME=PID of server processes to measure (with -gateways)")
	jsonPath := fs.String("json", "", "also write the report as JSON to this file")
	sources := fs.Int("sources", 16, "loopback source addresses 127.0.0.1..N for websockets")
	setup := fs.Int("setup", 32, "registrations, logins, chat creations and dials at once")
	password := fs.String("password", "loadgen-password", "password of the load generator's users")
	tokens := fs.String("tokens", "", "file keeping the users' tokens between runs against the same stack (skips logins)")
	cpuProfile := fs.String("cpuprofile", "", "write the load generator's own CPU profile to this file")
	subjectPrefix := fs.String("subject-prefix", "comms", "the services' NATS subject prefix (writer)")
	redisPrefix := fs.String("redis-prefix", "comms", "the services' Redis key prefix (writer)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: loadgen [flags] fanout|slow|idle|writer|history|storm|broadcast|cleanup [scenario flags]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	target, err := loadTarget(*stackPath, *gateways, *pids, *subjectPrefix, *redisPrefix)
	if err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no scenario given")
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	scenarioArgs := fs.Args()[1:]
	switch fs.Arg(0) {
	case "fanout", "slow":
		sf := flag.NewFlagSet(fs.Arg(0), flag.ContinueOnError)
		cfg := scenario.FanoutConfig{Target: target, Sources: *sources, Setup: *setup, Password: *password, Log: os.Stderr, TokenFile: *tokens}
		sf.IntVar(&cfg.Chats, "chats", 100, "chats")
		sf.IntVar(&cfg.Members, "members", 50, "members per chat, one websocket each")
		sf.Float64Var(&cfg.Rate, "rate", 1000, "sends a second over all chats (open loop)")
		sf.DurationVar(&cfg.Duration, "duration", 30*time.Second, "how long to send")
		sf.DurationVar(&cfg.Drain, "drain", 30*time.Second, "how long to wait at most for outstanding deliveries after sending")
		sf.StringVar(&cfg.UserPrefix, "users", "lg_u", "username prefix (existing users are reused)")
		slow := 0.0
		if fs.Arg(0) == "slow" {
			sf.Float64Var(&slow, "slow", 0.01, "fraction of the connections that never read (in the second run)")
		}
		if err := sf.Parse(scenarioArgs); err != nil {
			return err
		}
		if fs.Arg(0) == "slow" {
			rep, err := scenario.RunSlow(ctx, cfg, slow)
			if err != nil {
				return err
			}
			rep.WriteTable(os.Stdout)
			return writeJSON(*jsonPath, rep)
		}
		rep, err := scenario.RunFanout(ctx, cfg)
		if err != nil {
			return err
		}
		rep.WriteTable(os.Stdout)
		return writeJSON(*jsonPath, rep)
	case "idle":
		sf := flag.NewFlagSet("idle", flag.ContinueOnError)
		cfg := scenario.IdleConfig{Target: target, Sources: *sources, Setup: *setup, Password: *password, Log: os.Stderr, TokenFile: *tokens}
		sf.IntVar(&cfg.Conns, "conns", 15000, "idle websockets")
		sf.IntVar(&cfg.Gateway, "gateway", 0, "index of the gateway to connect to (0: the first)")
		sf.IntVar(&cfg.Procs, "procs", 1, "processes holding the connections (this one and workers it starts), for more than one may hold")
		sf.IntVar(&cfg.Users, "idle-users", 100, "users the connections belong to")
		sf.DurationVar(&cfg.Settle, "settle", 10*time.Second, "how long the connections stay idle before measuring")
		sf.StringVar(&cfg.UserPrefix, "users", "lg_idle", "username prefix (existing users are reused)")
		if err := sf.Parse(scenarioArgs); err != nil {
			return err
		}
		rep, err := scenario.RunIdle(ctx, cfg)
		if err != nil {
			return err
		}
		rep.WriteTable(os.Stdout)
		return writeJSON(*jsonPath, rep)
	case "broadcast":
		// The fanout shape against plain broadcast servers (cmd/wsbroadcast)
		// given with -gateways: the baseline for the gateway.
		sf := flag.NewFlagSet("broadcast", flag.ContinueOnError)
		cfg := scenario.BroadcastConfig{Target: target, Sources: *sources, Setup: *setup, Log: os.Stderr}
		sf.IntVar(&cfg.Rooms, "rooms", 100, "rooms")
		sf.IntVar(&cfg.Members, "members", 50, "websockets per room")
		sf.Float64Var(&cfg.Rate, "rate", 1000, "sends a second over all rooms (open loop)")
		sf.DurationVar(&cfg.Duration, "duration", 30*time.Second, "how long to send")
		sf.DurationVar(&cfg.Drain, "drain", 30*time.Second, "how long to wait at most for outstanding deliveries after sending")
		if err := sf.Parse(scenarioArgs); err != nil {
			return err
		}
		rep, err := scenario.RunBroadcast(ctx, cfg)
		if err != nil {
			return err
		}
		rep.WriteTable(os.Stdout)
		return writeJSON(*jsonPath, rep)
	case "writer":
		sf := flag.NewFlagSet("writer", flag.ContinueOnError)
		cfg := scenario.WriterConfig{Target: target, Setup: *setup, Password: *password, Log: os.Stderr, TokenFile: *tokens}
		sf.IntVar(&cfg.Chats, "chats", 100, "chats the messages go to")
		sf.IntVar(&cfg.Backlog, "backlog", 200_000, "messages put into the stream while the load generator holds the writers' lock (-1: skip)")
		sf.Float64Var(&cfg.Rate, "rate", 5000, "messages a second in the latency phase, open loop (-1: skip)")
		sf.DurationVar(&cfg.Duration, "duration", 20*time.Second, "how long the latency phase publishes")
		sf.StringVar(&cfg.Ingress, "ingress", scenario.IngressChat, "how the latency phase publishes: chat (batched as the chat service publishes concurrent sends) or single (each message on its own)")
		sf.DurationVar(&cfg.Timeout, "timeout", 2*time.Minute, "how long to wait at most for the writer to store everything")
		sf.StringVar(&cfg.UserPrefix, "users", "lg_u", "username prefix (existing users are reused)")
		if err := sf.Parse(scenarioArgs); err != nil {
			return err
		}
		rep, err := scenario.RunWriter(ctx, cfg)
		if err != nil {
			return err
		}
		rep.WriteTable(os.Stdout)
		return writeJSON(*jsonPath, rep)
	case "history":
		sf := flag.NewFlagSet("history", flag.ContinueOnError)
		cfg := scenario.HistoryConfig{Target: target, Setup: *setup, Password: *password, Log: os.Stderr, TokenFile: *tokens}
		sf.IntVar(&cfg.Messages, "messages", 1_000_000, "messages in the chat read (seeded once, kept)")
		sf.IntVar(&cfg.Members, "members", 100, "users in the chat, whose tokens the requests use in turn")
		sf.IntVar(&cfg.Limit, "limit", 50, "page size")
		sf.Float64Var(&cfg.Rate, "rate", 1000, "requests a second, open loop")
		sf.DurationVar(&cfg.Duration, "duration", 20*time.Second, "how long to send requests")
		sf.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "how long the same requests run first, not recorded (0: the default; negative: none)")
		sf.StringVar(&cfg.UserPrefix, "users", "lg_u", "username prefix (existing users are reused)")
		if err := sf.Parse(scenarioArgs); err != nil {
			return err
		}
		rep, err := scenario.RunHistory(ctx, cfg)
		if err != nil {
			return err
		}
		rep.WriteTable(os.Stdout)
		return writeJSON(*jsonPath, rep)
	case "cleanup":
		sf := flag.NewFlagSet("cleanup", flag.ContinueOnError)
		cfg := scenario.CleanupConfig{Target: target, Setup: *setup, Log: os.Stderr, TokenFile: *tokens}
		sf.StringVar(&cfg.UserPrefix, "users", "lg_u", "username prefix of the users whose chats are retired")
		sf.IntVar(&cfg.Users, "count", 10000, "users looked at: prefix followed by 000000 to count-1 (those with a token in -tokens)")
		if err := sf.Parse(scenarioArgs); err != nil {
			return err
		}
		_, err := scenario.Cleanup(ctx, cfg)
		return err
	case "storm":
		sf := flag.NewFlagSet("storm", flag.ContinueOnError)
		cfg := scenario.StormConfig{Target: target, Sources: *sources, Setup: *setup, Password: *password, Log: os.Stderr, TokenFile: *tokens}
		sf.IntVar(&cfg.Clients, "clients", 10000, "websockets on the gateway killed (a multiple of chats x members)")
		sf.IntVar(&cfg.Chats, "chats", 100, "chats of the clients")
		sf.IntVar(&cfg.Members, "members", 50, "users per chat")
		sf.IntVar(&cfg.Gateway, "gateway", 0, "index of the gateway killed")
		sf.IntVar(&cfg.Resume, "resume", 1, "index of the gateway the clients resume on")
		sf.Float64Var(&cfg.Rate, "rate", 100, "sends a second into the clients' chats, open loop, from the other gateway")
		sf.DurationVar(&cfg.Before, "before", 3*time.Second, "sending before the kill")
		sf.DurationVar(&cfg.After, "after", 2*time.Second, "sending after the last resume")
		sf.DurationVar(&cfg.BackoffMin, "backoff-min", 500*time.Millisecond, "reconnect backoff of the web app: attempt n waits half to all of min(backoff-max, backoff-min x 2^n)")
		sf.DurationVar(&cfg.BackoffMax, "backoff-max", 15*time.Second, "the backoff's ceiling")
		sf.DurationVar(&cfg.Timeout, "timeout", time.Minute, "clients not resumed by then count as not resumed")
		sf.DurationVar(&cfg.Drain, "drain", 30*time.Second, "how long to wait at most for outstanding deliveries")
		sf.StringVar(&cfg.UserPrefix, "users", "lg_u", "username prefix (existing users are reused)")
		if err := sf.Parse(scenarioArgs); err != nil {
			return err
		}
		rep, err := scenario.RunStorm(ctx, cfg)
		if err != nil {
			return err
		}
		rep.WriteTable(os.Stdout)
		return writeJSON(*jsonPath, rep)
	}
	return fmt.Errorf("unknown scenario %q: want fanout, slow, idle, writer, history, storm or broadcast", fs.Arg(0))
}

// loadTarget reads the stack file, or the gateways and pids flags.
func loadTarget(stackPath, gateways, pids, subjectPrefix, redisPrefix string) (scenario.Target, error) {
	if stackPath != "" {
		s, err := devstack.ReadStackFile(stackPath)
		if err != nil {
			return scenario.Target{}, err
		}
		return scenario.Target{Gateways: s.Gateways, Pids: s.Pids, Debug: s.Debug,
			Postgres: s.Postgres, Redis: s.Redis, NATS: s.NATS, SubjectPrefix: subjectPrefix, RedisPrefix: redisPrefix}, nil
	}
	if gateways == "" {
		return scenario.Target{}, errors.New("give -stack FILE, or -gateways with comma-separated URLs")
	}
	t := scenario.Target{Gateways: strings.Split(gateways, ","), Pids: map[string]int{}, SubjectPrefix: subjectPrefix, RedisPrefix: redisPrefix}
	if pids != "" {
		for kv := range strings.SplitSeq(pids, ",") {
			name, v, ok := strings.Cut(kv, "=")
			pid, err := strconv.Atoi(v)
			if !ok || err != nil || pid <= 0 {
				return t, fmt.Errorf("-pids: want NAME=PID, got %q", kv)
			}
			t.Pids[name] = pid
		}
	}
	return t, nil
}

func writeJSON(path string, v any) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

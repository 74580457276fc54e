package devstack

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisOptions tunes StartRedis.
type RedisOptions struct {
	// Ephemeral turns persistence off, for test runs. Default false: an
	// append-only file in the data folder.
	Ephemeral bool
	// Log receives the server's output. Default: discarded.
	Log io.Writer
}

// Redis is a running Redis server.
type Redis struct {
	*Process
	Port   int
	launch func(ctx context.Context) (*Process, error)
}

// URL returns the server's URL.
func (r *Redis) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.Port) }

// Stop shuts the server down (saving its data unless ephemeral).
func (r *Redis) Stop() error { return r.Process.Stop(30 * time.Second) }

// Start starts a stopped server again on the same port with the same data
// folder (an ephemeral server starts empty).
func (r *Redis) Start(ctx context.Context) error {
	proc, err := relaunch(ctx, r.Process, r.launch)
	if err != nil {
		return err
	}
	r.Process = proc
	return nil
}

// StartRedis starts redis-server on a free loopback port with its data in dir.
func StartRedis(ctx context.Context, dir string, opts RedisOptions) (*Redis, error) {
	bin, err := lookBin("redis-server", "/usr/bin/redis-server", "/usr/sbin/redis-server")
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("redis data dir: %w", err)
	}
	launch := func(ctx context.Context, port int) (*Process, error) {
		args := []string{"--port", itoa(port), "--bind", "127.0.0.1", "--dir", dir,
			"--daemonize", "no", "--protected-mode", "yes", "--maxclients", "10000"}
		if opts.Ephemeral {
			args = append(args, "--save", "", "--appendonly", "no")
		} else {
			args = append(args, "--appendonly", "yes", "--appendfsync", "everysec")
		}
		proc, err := Start("redis", exec.Command(bin, args...), syscall.SIGTERM, opts.Log)
		if err != nil {
			return nil, err
		}
		err = waitFor(ctx, proc, 30*time.Second, func(ctx context.Context) error {
			c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
			defer c.Close()
			return c.Ping(ctx).Err()
		})
		if err != nil {
			_ = proc.Stop(10 * time.Second)
			return nil, err
		}
		return proc, nil
	}
	return withPortRetry(func(port int) (*Redis, error) {
		proc, err := launch(ctx, port)
		if err != nil {
			return nil, err
		}
		return &Redis{Process: proc, Port: port,
			launch: func(ctx context.Context) (*Process, error) { return launch(ctx, port) }}, nil
	})
}

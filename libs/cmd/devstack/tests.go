package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/communications/communications/libs/devstack"
	"github.com/communications/communications/libs/testenv"
)

// runTests starts throwaway PostgreSQL and Redis servers and runs
// `go test -race -count=1 ./...` in every module of the workspace, passing
// extra as further go test flags. The servers are stopped at the end.
// natsBin, when set, is passed on to the tests that run nats-server as a
// process of its own (the fault tests), which then must find it.
func runTests(ctx context.Context, root, natsBin string, extra []string) error {
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	state := filepath.Join(root, ".state", "test")
	if err := os.RemoveAll(state); err != nil {
		return err
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		return err
	}
	modules, err := workspaceModules(ctx, root)
	if err != nil {
		return err
	}

	start := time.Now()
	fmt.Println("starting test postgres and redis ...")
	pgLog, err := os.Create(filepath.Join(state, "postgres.log"))
	if err != nil {
		return err
	}
	defer pgLog.Close()
	pg, err := devstack.StartPostgres(ctx, filepath.Join(state, "postgres"), devstack.PostgresOptions{Ephemeral: true, Log: pgLog, Notice: os.Stdout})
	if err != nil {
		return err
	}
	defer pg.Stop()
	rd, err := devstack.StartRedis(ctx, filepath.Join(state, "redis"), devstack.RedisOptions{Ephemeral: true})
	if err != nil {
		return err
	}
	defer rd.Stop()
	fmt.Printf("postgres on :%d, redis on :%d (%s)\n", pg.Port, rd.Port, time.Since(start).Round(time.Millisecond))

	env := append(os.Environ(),
		testenv.EnvPostgresURL+"="+pg.URL("postgres"),
		testenv.EnvRedisURL+"="+rd.URL(),
	)
	if natsBin != "" {
		abs, err := filepath.Abs(natsBin)
		if err != nil {
			return err
		}
		env = append(env, testenv.EnvNATSServer+"="+abs)
	}
	var failed []string
	for _, dir := range modules {
		rel, _ := filepath.Rel(root, dir)
		fmt.Printf("\n=== go test %s\n", rel)
		args := append([]string{"test", "-race", "-count=1"}, extra...)
		args = append(args, "./...")
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = dir
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			failed = append(failed, rel)
		}
	}
	fmt.Printf("\ntests of %d modules took %s\n", len(modules), time.Since(start).Round(time.Second))
	if len(failed) > 0 {
		return fmt.Errorf("tests failed in: %s", strings.Join(failed, ", "))
	}
	return nil
}

// workspaceModules lists the directories of the workspace's modules.
func workspaceModules(ctx context.Context, root string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list -m: %w", err)
	}
	return strings.Fields(string(out)), nil
}

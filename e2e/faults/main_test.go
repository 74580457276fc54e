package faults

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/communications/communications/libs/devstack"
	"github.com/communications/communications/libs/testenv"
)

// infra is the infrastructure every fault test shares: servers of its own
// (never the test command's shared ones, since the tests stop them), and
// the service binaries built once.
type infra struct {
	dir   string // temporary folder for everything below
	bin   string // folder of the service binaries
	pg    *devstack.Postgres
	redis *devstack.Redis
	nats  *devstack.NATS
	logs  string // folder of every process's log
}

// the package's shared infrastructure, set by TestMain.
var (
	shared     *infra
	skipReason string
)

func TestMain(m *testing.M) {
	code, err := mainRun(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fault tests:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func mainRun(m *testing.M) (int, error) {
	natsBin, err := findNATSServer()
	if err != nil {
		return 0, err
	}
	if natsBin == "" {
		// Only the fault scenarios need the processes; the checker's own
		// tests still run.
		skipReason = "nats-server not found (in " + testenv.EnvNATSServer + ", .state/bin or on PATH): run ./scripts/test, which installs it, or put it on PATH"
		return m.Run(), nil
	}
	// A run that panicked or hit go test's -timeout never removed its
	// folder; remove those whose test binary is gone.
	removeStale(os.TempDir())
	dir, err := os.MkdirTemp("", tempPrefix)
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return 0, err
	}
	// The postgres user must reach the data folder when tests run as root.
	if err := os.Chmod(dir, 0o755); err != nil {
		return 0, err
	}
	in := &infra{dir: dir, bin: filepath.Join(dir, "bin"), logs: filepath.Join(dir, "logs")}
	if err := os.MkdirAll(in.logs, 0o755); err != nil {
		return 0, err
	}
	if err := buildServices(in.bin); err != nil {
		return 0, err
	}
	ctx := context.Background()
	pgLog, err := os.Create(filepath.Join(in.logs, "postgres.log"))
	if err != nil {
		return 0, err
	}
	defer pgLog.Close()
	// Durable, as in production: an ephemeral server (synchronous_commit
	// off) loses its last commits in an immediate shutdown, which the
	// PostgreSQL scenario does.
	if in.pg, err = devstack.StartPostgres(ctx, filepath.Join(dir, "postgres"), devstack.PostgresOptions{Log: pgLog, Notice: os.Stderr}); err != nil {
		return 0, err
	}
	defer in.pg.Stop()
	if in.redis, err = devstack.StartRedis(ctx, filepath.Join(dir, "redis"), devstack.RedisOptions{Ephemeral: true}); err != nil {
		return 0, err
	}
	defer in.redis.Stop()
	natsLog, err := os.Create(filepath.Join(in.logs, "nats.log"))
	if err != nil {
		return 0, err
	}
	defer natsLog.Close()
	if in.nats, err = devstack.StartNATS(ctx, filepath.Join(dir, "nats"), devstack.NATSOptions{Binary: natsBin, Log: natsLog}); err != nil {
		return 0, err
	}
	defer in.nats.Stop()
	shared = in
	return m.Run(), nil
}

// tempPrefix starts the name of the package's temporary folder, which holds
// the process id of its test binary in ownerFile.
const (
	tempPrefix = "comms-faults-"
	ownerFile  = "owner.pid"
)

// removeStale removes the package's temporary folders in parent whose
// owner is no longer running.
func removeStale(parent string) {
	dirs, err := filepath.Glob(filepath.Join(parent, tempPrefix+"*"))
	if err != nil {
		return
	}
	for _, dir := range dirs {
		if ownerRunning(dir) {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(os.Stderr, "fault tests: remove the stale %s: %v\n", dir, err)
		}
	}
}

// ownerRunning reports whether the process named in dir's owner file
// runs. A folder without one is taken as running for an hour: its owner
// may be about to write it.
func ownerRunning(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		st, err := os.Stat(dir)
		return err == nil && time.Since(st.ModTime()) < time.Hour
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return false
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// findNATSServer returns the nats-server program: the one the test command
// names (which must exist), else .state/bin's, else PATH's; "" when there
// is none.
func findNATSServer() (string, error) {
	if p := os.Getenv(testenv.EnvNATSServer); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", testenv.EnvNATSServer, p, err)
		}
		return p, nil
	}
	if p, err := filepath.Abs(filepath.Join("..", "..", ".state", "bin", "nats-server")); err == nil {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, nil
	} else if !errors.Is(err, exec.ErrNotFound) {
		return "", err
	}
	return "", nil
}

// buildServices builds the four service programs into dir.
func buildServices(dir string) error {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// One go build of the four main packages (named after their folders).
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"./services/auth", "./services/chat", "./services/history", "./services/gateway")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the services: %w\n%s", err, out)
	}
	return nil
}

// needInfra skips a scenario when nats-server is missing (only possible
// when the package runs on its own, outside the test command).
func needInfra(t *testing.T) *infra {
	t.Helper()
	if shared == nil {
		t.Skip(skipReason)
	}
	return shared
}

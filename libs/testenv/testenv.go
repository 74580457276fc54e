// Package testenv gives tests real infrastructure: a fresh PostgreSQL
// database per test, a unique Redis key prefix per test, and an embedded
// nats-server with JetStream per test.
//
// The test command starts one PostgreSQL and one Redis server for the whole
// run and passes them in COMMS_TEST_POSTGRES_URL (a superuser URL) and
// COMMS_TEST_REDIS_URL. A package run on its own, without them, gets its own
// servers from Main, started under a temporary folder and stopped after.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/devstack"
)

// Environment variables set by the test command.
const (
	EnvPostgresURL = "COMMS_TEST_POSTGRES_URL"
	EnvRedisURL    = "COMMS_TEST_REDIS_URL"
	// EnvNATSServer names the nats-server program, for tests that run NATS
	// as a separate process (the fault tests stop and restart it).
	EnvNATSServer = "COMMS_TEST_NATS_SERVER"
)

// Main runs a package's tests, first starting PostgreSQL and Redis when the
// test command did not provide them. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
func Main(m *testing.M) int {
	if os.Getenv(EnvPostgresURL) != "" && os.Getenv(EnvRedisURL) != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "comms-testenv-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The postgres user must reach the data folder when tests run as root.
	_ = os.Chmod(dir, 0o755)
	ctx := context.Background()
	pg, err := devstack.StartPostgres(ctx, filepath.Join(dir, "postgres"), devstack.PostgresOptions{Ephemeral: true, Notice: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer pg.Stop()
	rd, err := devstack.StartRedis(ctx, filepath.Join(dir, "redis"), devstack.RedisOptions{Ephemeral: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer rd.Stop()
	os.Setenv(EnvPostgresURL, pg.URL("postgres"))
	os.Setenv(EnvRedisURL, rd.URL())
	return m.Run()
}

// UniqueName returns prefix followed by random lowercase hex.
func UniqueName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Postgres creates an empty database for the test, drops it when the test
// ends, and returns its URL.
func Postgres(t testing.TB) string {
	t.Helper()
	admin := os.Getenv(EnvPostgresURL)
	if admin == "" {
		t.Fatalf("%s is not set: run the tests with the test command, or call testenv.Main from TestMain", EnvPostgresURL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("connect postgres: %v", err)
	}
	defer conn.Close(ctx)
	name := UniqueName("t_")
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Errorf("connect postgres to drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("parse %s: %v", EnvPostgresURL, err)
	}
	u.Path = "/" + name
	return u.String()
}

// Querier runs a query: a pgx connection or pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Plan returns PostgreSQL's plan of sql with args (EXPLAIN), one line per
// plan line, for tests that check a statement is served by an index.
func Plan(t testing.TB, q Querier, sql string, args ...any) string {
	t.Helper()
	rows, err := q.Query(context.Background(), "EXPLAIN "+sql, args...)
	if err != nil {
		t.Fatalf("explain: %v", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("explain: %v", err)
	}
	return strings.Join(lines, "\n")
}

// Redis returns the Redis URL and a key prefix unique to the test (letters
// and digits, no separator). Tests keep all their keys and channels under
// the prefix.
func Redis(t testing.TB) (redisURL, prefix string) {
	t.Helper()
	u := os.Getenv(EnvRedisURL)
	if u == "" {
		t.Fatalf("%s is not set: run the tests with the test command, or call testenv.Main from TestMain", EnvRedisURL)
	}
	return u, UniqueName("t")
}

// NATSConn starts a server as NATS does and returns a connection to it,
// closed when the test ends.
func NATSConn(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(NATS(t).ClientURL())
	if err != nil {
		t.Fatalf("nats connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// NATS starts an embedded nats-server with JetStream (file storage in a
// temporary folder, fsync on every write) on a free port, shuts it down when
// the test ends, and returns it.
func NATS(t testing.TB) *natsserver.Server {
	t.Helper()
	opts := &natsserver.Options{
		Host:       "127.0.0.1",
		Port:       natsserver.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		SyncAlways: true,
		NoLog:      true,
		NoSigs:     true,
	}
	s, err := natsserver.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// Eventually polls cond every 10ms until it returns true, failing the test
// with msg when timeout passes first.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	EventuallyDescribe(t, timeout, cond, func() string { return fmt.Sprintf(msg, args...) })
}

// EventuallyDescribe is Eventually with a failure message built at the
// deadline, so that it can show the state the test gave up on.
func EventuallyDescribe(t testing.TB, timeout time.Duration, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s: %s", timeout, describe())
		}
		<-tick.C
	}
}

// SubjectPrefix returns a NATS subject prefix unique to the test.
func SubjectPrefix() string { return strings.ToLower(UniqueName("t")) }

// LogBuffer is a log destination tests read back, safe for concurrent
// writes.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

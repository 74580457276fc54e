package devstack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresOptions tunes StartPostgres.
type PostgresOptions struct {
	// Ephemeral starts from an empty cluster and trades durability for
	// speed (fsync off), for test runs whose data is thrown away. Default
	// false: durable, and the cluster in the folder is reused.
	Ephemeral bool
	// Log receives the server's output. Default: discarded.
	Log io.Writer
	// Notice receives one-line notes for the person running the stack
	// (such as a moved data folder). Default: discarded.
	Notice io.Writer
}

// Postgres is a running PostgreSQL server.
type Postgres struct {
	*Process
	Port int
	// Dir is the data folder actually used.
	Dir string
	// launch starts the server on Port with the data in Dir and waits
	// until it accepts connections.
	launch func(ctx context.Context) (*Process, error)
}

// URL returns the connection URL of database db as superuser postgres.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.Port, db)
}

// CreateDatabase creates database name unless it exists.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Stop stops the server with a fast shutdown.
func (p *Postgres) Stop() error { return p.Process.Stop(30 * time.Second) }

// StopImmediate stops the server the way a crash would (an immediate
// shutdown: no checkpoint, recovery from the WAL at the next start).
func (p *Postgres) StopImmediate() error { return p.StopWith(syscall.SIGQUIT, 30*time.Second) }

// Start starts a stopped server again on the same port with the same data.
func (p *Postgres) Start(ctx context.Context) error {
	proc, err := relaunch(ctx, p.Process, p.launch)
	if err != nil {
		return err
	}
	p.Process = proc
	return nil
}

// StartPostgres starts a PostgreSQL server on a free loopback port with its
// data in dir, creating the cluster (superuser postgres, trust auth on
// loopback) on first use and reusing it after. PostgreSQL refuses to run as
// root, so when the caller is root the server runs as the system user
// "postgres", which must own dir; if that user cannot reach dir (a home
// folder closed to others), a folder under the system's temporary directory
// named after dir is used instead and reported on opts.Notice.
func StartPostgres(ctx context.Context, dir string, opts PostgresOptions) (*Postgres, error) {
	bindir, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	cred, err := postgresCredential()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("postgres data dir: %w", err)
	}
	if cred != nil && !reachableBy(filepath.Dir(dir), cred) {
		sum := sha256.Sum256([]byte(dir))
		moved := filepath.Join(os.TempDir(), "communications-pg-"+hex.EncodeToString(sum[:6]))
		if opts.Notice != nil {
			fmt.Fprintf(opts.Notice, "postgres: user postgres cannot reach %s; keeping the data in %s\n", dir, moved)
		}
		dir = moved
	}
	if opts.Ephemeral {
		// Throwaway data: start from an empty cluster every time (the
		// folder may have moved out of the caller's own state folder).
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("postgres data dir: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("postgres data dir: %w", err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("postgres data dir: %w", err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("postgres data dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); os.IsNotExist(err) {
		args := []string{"-D", dir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"}
		if opts.Ephemeral {
			args = append(args, "--no-sync")
		}
		cmd := exec.CommandContext(ctx, filepath.Join(bindir, "initdb"), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("initdb: %w\n%s", err, out)
		}
	}
	launch := func(ctx context.Context, port int) (*Process, error) {
		args := []string{"-D", dir, "-p", itoa(port),
			"-c", "listen_addresses=127.0.0.1",
			"-c", "unix_socket_directories=",
			"-c", "max_connections=400",
		}
		if opts.Ephemeral {
			args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
		} else {
			args = append(args, "-c", "shared_buffers="+sharedBuffers(memTotal()))
		}
		cmd := exec.Command(filepath.Join(bindir, "postgres"), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = dir
		proc, err := Start("postgres", cmd, syscall.SIGINT, opts.Log)
		if err != nil {
			return nil, err
		}
		url := (&Postgres{Port: port}).URL("postgres")
		err = waitFor(ctx, proc, 60*time.Second, func(ctx context.Context) error {
			c, err := pgx.Connect(ctx, url)
			if err != nil {
				return err
			}
			return c.Close(ctx)
		})
		if err != nil {
			_ = proc.Stop(10 * time.Second)
			return nil, err
		}
		return proc, nil
	}
	return withPortRetry(func(port int) (*Postgres, error) {
		proc, err := launch(ctx, port)
		if err != nil {
			return nil, err
		}
		return &Postgres{Process: proc, Port: port, Dir: dir,
			launch: func(ctx context.Context) (*Process, error) { return launch(ctx, port) }}, nil
	})
}

// postgresBinDir finds the newest installed PostgreSQL server programs.
func postgresBinDir() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Slice(matches, func(i, j int) bool { return pgMajor(matches[i]) > pgMajor(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	p, err := lookBin("postgres")
	if err != nil {
		return "", err
	}
	return filepath.Dir(p), nil
}

func pgMajor(path string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return v
}

// postgresCredential returns the credential to run PostgreSQL with: nil
// when the caller is not root, else the system user postgres.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the system user postgres (Debian's postgresql package creates it): %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// reachableBy reports whether every folder from / down to dir can be
// searched by cred's user (other-execute, or owner/group execute when they
// match).
func reachableBy(dir string, cred *syscall.Credential) bool {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return false
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return false
		}
		mode := st.Mode().Perm()
		switch {
		case sys.Uid == cred.Uid:
			if mode&0o100 == 0 {
				return false
			}
		case sys.Gid == cred.Gid:
			if mode&0o010 == 0 {
				return false
			}
		default:
			if mode&0o001 == 0 {
				return false
			}
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

// sharedBuffers sizes PostgreSQL's buffer cache for a durable stack on a
// machine with mem bytes of memory (0: unknown): an eighth of it (every
// service of the stack shares the machine), at least PostgreSQL's default
// 128 MB and at most 2 GB. With the default, the history writer's inserts
// into a grown messages table keep evicting the index pages they need
// next (docs/benchmarks.md, "History writer, third round").
func sharedBuffers(mem uint64) string {
	const mb = 1 << 20
	size := min(max(mem/8, 128*mb), 2048*mb)
	return strconv.FormatUint(size/mb, 10) + "MB"
}

// memTotal returns the machine's memory in bytes from /proc/meminfo, or 0.
func memTotal() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

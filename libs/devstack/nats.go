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

	"github.com/nats-io/nats.go"
)

// NATSOptions tunes StartNATS.
type NATSOptions struct {
	// Binary is the nats-server program. Default: nats-server on PATH.
	Binary string
	// Log receives the server's output. Default: discarded.
	Log io.Writer
}

// NATS is a running nats-server with JetStream.
type NATS struct {
	*Process
	Port        int
	MonitorPort int
	launch      func(ctx context.Context) (*Process, error)
}

// URL returns the client URL.
func (n *NATS) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.Port) }

// Stop shuts the server down.
func (n *NATS) Stop() error { return n.Process.Stop(30 * time.Second) }

// Start starts a stopped server again on the same ports with the same
// JetStream store.
func (n *NATS) Start(ctx context.Context) error {
	proc, err := relaunch(ctx, n.Process, n.launch)
	if err != nil {
		return err
	}
	n.Process = proc
	return nil
}

// NATSConfig renders a nats-server configuration: client and monitoring
// listeners on loopback, JetStream with file storage in storeDir, fsync
// after every write (sync_interval: always) so an acknowledged message
// survives a crash of the machine, not only of the process.
func NATSConfig(port, monitorPort int, storeDir string) string {
	return fmt.Sprintf(`# written by devstack; regenerated at every start
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
max_payload: 1MB
jetstream {
  store_dir: %q
  sync_interval: always
}
`, port, monitorPort, storeDir)
}

// StartNATS starts nats-server with JetStream storing in dir.
func StartNATS(ctx context.Context, dir string, opts NATSOptions) (*NATS, error) {
	bin := opts.Binary
	if bin == "" {
		var err error
		if bin, err = lookBin("nats-server"); err != nil {
			return nil, err
		}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("nats data dir: %w", err)
	}
	launch := func(ctx context.Context, conf, url string) (*Process, error) {
		proc, err := Start("nats", exec.Command(bin, "-c", conf), syscall.SIGTERM, opts.Log)
		if err != nil {
			return nil, err
		}
		err = waitFor(ctx, proc, 30*time.Second, func(ctx context.Context) error {
			nc, err := nats.Connect(url, nats.Timeout(time.Second))
			if err != nil {
				return err
			}
			defer nc.Close()
			js, err := nc.JetStream()
			if err != nil {
				return err
			}
			_, err = js.AccountInfo(nats.Context(ctx))
			return err
		})
		if err != nil {
			_ = proc.Stop(10 * time.Second)
			return nil, err
		}
		return proc, nil
	}
	return withPortRetry(func(port int) (*NATS, error) {
		mport, err := FreePort()
		if err != nil {
			return nil, err
		}
		conf := filepath.Join(dir, "nats.conf")
		if err := os.WriteFile(conf, []byte(NATSConfig(port, mport, filepath.Join(dir, "jetstream"))), 0o644); err != nil {
			return nil, fmt.Errorf("write nats config: %w", err)
		}
		n := &NATS{Port: port, MonitorPort: mport}
		n.launch = func(ctx context.Context) (*Process, error) { return launch(ctx, conf, n.URL()) }
		if n.Process, err = n.launch(ctx); err != nil {
			return nil, err
		}
		return n, nil
	})
}

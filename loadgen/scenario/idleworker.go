package scenario

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// IdleWorkerSpec is what an idle worker process opens: connections From to
// From+N-1 to Gateway, connection i as the user of Tokens[i mod
// len(Tokens)].
type IdleWorkerSpec struct {
	Gateway string   `json:"gateway"`
	Tokens  []string `json:"tokens"`
	From    int      `json:"from"`
	N       int      `json:"n"`
	Sources int      `json:"sources"`
	Setup   int      `json:"setup"`
}

// IdleWorkerCommand is the load generator's hidden command that runs an
// idle worker.
const IdleWorkerCommand = "idle-worker"

// RunIdleWorker is an idle worker: it reads its spec as one JSON line from
// in, opens the connections, writes "ready" (or "error: ...") as one line
// to out, and keeps them open until in ends.
func RunIdleWorker(ctx context.Context, in io.Reader, out io.Writer) error {
	r := bufio.NewReader(in)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("idle worker: read spec: %w", err)
	}
	var spec IdleWorkerSpec
	if err := json.Unmarshal(line, &spec); err != nil {
		return fmt.Errorf("idle worker: spec: %w", err)
	}
	if err := ensureFiles(spec.N); err != nil {
		fmt.Fprintf(out, "error: %v\n", err)
		return err
	}
	conns, readers, err := openIdle(ctx, newDialers(spec.Sources), spec.Gateway, spec.Tokens, spec.From, spec.N, spec.Setup)
	if err != nil {
		fmt.Fprintf(out, "error: %d open: %v\n", countOpen(conns), err)
	} else {
		fmt.Fprintln(out, "ready")
	}
	_, _ = io.Copy(io.Discard, r) // until the parent closes our input
	for _, c := range conns {
		if c != nil {
			c.ws.Close()
		}
	}
	readers.Wait()
	return err
}

// idleWorker is a started worker process.
type idleWorker struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startIdleWorker(ctx context.Context, spec IdleWorkerSpec) (*idleWorker, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe, IdleWorkerCommand)
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 10 * time.Second
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &idleWorker{cmd: cmd, in: in, out: bufio.NewReader(out)}
	b, err := json.Marshal(spec)
	if err == nil {
		_, err = in.Write(append(b, '\n'))
	}
	if err != nil {
		w.stop()
		return nil, err
	}
	return w, nil
}

// ready waits for the worker's connections.
func (w *idleWorker) ready() error {
	line, err := w.out.ReadString('\n')
	if err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	line = strings.TrimSpace(line)
	if line != "ready" {
		return errors.New(strings.TrimPrefix(line, "error: "))
	}
	return nil
}

// stop closes the worker's input, so it closes its connections and exits,
// and waits for it.
func (w *idleWorker) stop() {
	_ = w.in.Close()
	_ = w.cmd.Wait()
}

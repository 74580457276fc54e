// Package devstack starts the infrastructure communications runs on (a
// PostgreSQL cluster, a Redis server and a nats-server with JetStream) as
// child processes on loopback, on free ports, with their state in a folder
// the caller chooses. The run command, the test command and the test
// environment use it; nothing here touches a server someone else started.
package devstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// Process is a started child process.
type Process struct {
	Name string
	cmd  *exec.Cmd
	stop syscall.Signal
	done chan struct{}
	err  error
}

// Start runs cmd in its own process group (so a terminal's Ctrl-C reaches
// only the supervisor, which stops children in order) and asks the kernel to
// signal it if the supervisor dies.
func Start(name string, cmd *exec.Cmd, stop syscall.Signal, log io.Writer) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if log != nil {
		cmd.Stdout = log
		cmd.Stderr = log
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, cmd: cmd, stop: stop, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns the exit error once Done is closed.
func (p *Process) Err() error { return p.err }

// Stop sends the process its stop signal and waits up to timeout for it to
// exit, then kills it.
func (p *Process) Stop(timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(p.stop)
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("stop %s: killed after %s", p.Name, timeout)
	}
}

// Kill sends SIGKILL and waits for the exit.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// StopWith sends the process sig instead of its stop signal and waits up
// to timeout for it to exit, then kills it.
func (p *Process) StopWith(sig syscall.Signal, timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("stop %s: killed after %s", p.Name, timeout)
	}
}

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// relaunch starts a stopped server again with launch (same port, same
// data), or fails when it still runs.
func relaunch(ctx context.Context, cur *Process, launch func(context.Context) (*Process, error)) (*Process, error) {
	if cur.Running() {
		return nil, fmt.Errorf("start %s: it is still running", cur.Name)
	}
	return launch(ctx)
}

// waitFor polls ready until it succeeds, the process exits, or timeout.
func waitFor(ctx context.Context, p *Process, timeout time.Duration, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = ready(ctx); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited while starting: %v (last check: %w)", p.Name, p.err, last)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %w", p.Name, timeout, last)
		case <-tick.C:
		}
	}
}

// withPortRetry calls try with fresh free ports until one start succeeds
// (a port taken between choosing and binding makes the start fail).
func withPortRetry[T any](try func(port int) (T, error)) (T, error) {
	var zero T
	var errs []error
	for range 3 {
		port, err := FreePort()
		if err != nil {
			return zero, err
		}
		v, err := try(port)
		if err == nil {
			return v, nil
		}
		errs = append(errs, err)
	}
	return zero, errors.Join(errs...)
}

// lookBin finds a program on PATH or in the given fallback paths.
func lookBin(name string, fallbacks ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, f := range fallbacks {
		if st, err := os.Stat(f); err == nil && !st.IsDir() {
			return f, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH (install it; the run and test commands do)", name)
}

func itoa(i int) string { return strconv.Itoa(i) }

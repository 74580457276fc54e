package scenario

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/communications/communications/loadgen/procstat"
)

// Target is the running stack a scenario drives.
type Target struct {
	// Gateways are the gateways' base URLs (http://HOST:PORT).
	Gateways []string
	// Pids names the server processes to measure (may be empty).
	Pids map[string]int
	// Debug maps process names to their debug servers' base URLs (for
	// /metrics); may be empty.
	Debug map[string]string
	// Postgres, Redis and NATS are the infrastructure's URLs, needed by the
	// scenarios that seed or publish behind the gateways (writer, history);
	// may be empty otherwise.
	Postgres, Redis, NATS string
	// SubjectPrefix and RedisPrefix are the services' NATS subject prefix
	// and Redis key prefix ("comms", the services' default, when empty).
	SubjectPrefix, RedisPrefix string
}

func (t Target) subjectPrefix() string {
	if t.SubjectPrefix == "" {
		return "comms"
	}
	return t.SubjectPrefix
}

func (t Target) redisPrefix() string {
	if t.RedisPrefix == "" {
		return "comms"
	}
	return t.RedisPrefix
}

// Latency is a latency distribution in milliseconds.
type Latency struct {
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p99_9_ms"`
	Max  float64 `json:"max_ms"`
}

// Process is the CPU and memory of one process over a measured window.
type Process struct {
	Name string `json:"name"`
	Pid  int    `json:"pid"`
	// CPUSeconds is the user plus system time spent in the window,
	// including the process's children (PostgreSQL's backends).
	CPUSeconds float64 `json:"cpu_seconds"`
	// RSSBeforeKiB and RSSAfterKiB are the process's resident memory at the
	// start and the end of the window.
	RSSBeforeKiB int64 `json:"rss_before_kib"`
	RSSAfterKiB  int64 `json:"rss_after_kib"`
}

// procSnapshot samples every process of a target, and the load generator.
type procSnapshot map[string]procstat.Sample

// loadgenName is the load generator's own row in the process table.
const loadgenName = "loadgen"

func snapshot(pids map[string]int) procSnapshot {
	s := procSnapshot{}
	for name, pid := range pids {
		if v, err := procstat.Read("/proc", pid); err == nil {
			s[name] = v
		}
	}
	if v, err := procstat.Read("/proc", os.Getpid()); err == nil {
		s[loadgenName] = v
	}
	return s
}

// processes compares two snapshots, sorted by name with the load generator
// last.
func processes(pids map[string]int, before, after procSnapshot) []Process {
	var out []Process
	names := slices.Sorted(maps.Keys(before))
	for _, name := range names {
		b, a := before[name], after[name]
		if _, ok := after[name]; !ok {
			continue // exited meanwhile (the storm's gateway)
		}
		pid := pids[name]
		if name == loadgenName {
			pid = os.Getpid()
		}
		out = append(out, Process{Name: name, Pid: pid, CPUSeconds: a.CPUSeconds - b.CPUSeconds, RSSBeforeKiB: b.RSSKiB, RSSAfterKiB: a.RSSKiB})
	}
	slices.SortStableFunc(out, func(x, y Process) int {
		if (x.Name == loadgenName) != (y.Name == loadgenName) {
			if x.Name == loadgenName {
				return 1
			}
			return -1
		}
		return strings.Compare(x.Name, y.Name)
	})
	return out
}

// goroutines reads go_goroutines from a debug server's /metrics.
func goroutines(debugBase string) (int64, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(debugBase + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return parseGoroutines(resp.Body)
}

// parseGoroutines finds the go_goroutines gauge in a Prometheus text
// exposition.
func parseGoroutines(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, fmt.Errorf("go_goroutines: %w", err)
			}
			return int64(f), nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no go_goroutines in the metrics")
}

// writeProcesses writes the process table, with CPU per delivery when
// delivered > 0.
func writeProcesses(w io.Writer, procs []Process, delivered int64) {
	writeProcessesPer(w, procs, delivered, "delivery")
}

// writeProcessesPer writes the process table, with CPU per unit (one of n)
// when n > 0.
func writeProcessesPer(w io.Writer, procs []Process, delivered int64, unit string) {
	if len(procs) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%-12s %8s %10s %14s %14s", "process", "pid", "cpu s", "rss before MiB", "rss after MiB")
	if delivered > 0 {
		fmt.Fprintf(w, " %16s", "cpu us/"+unit)
	}
	fmt.Fprintln(w)
	for _, p := range procs {
		fmt.Fprintf(w, "%-12s %8d %10.2f %14.1f %14.1f", p.Name, p.Pid, p.CPUSeconds, float64(p.RSSBeforeKiB)/1024, float64(p.RSSAfterKiB)/1024)
		if delivered > 0 {
			fmt.Fprintf(w, " %16.2f", p.CPUSeconds*1e6/float64(delivered))
		}
		fmt.Fprintln(w)
	}
}

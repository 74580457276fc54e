// Package procstat reads the CPU time and resident memory of processes
// from Linux's /proc, for the load generator's reports.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// ClockTicks is the kernel's USER_HZ, the unit of the CPU times in
// /proc/PID/stat; 100 on every Linux architecture Go supports.
const ClockTicks = 100

// Stat is what /proc/PID/stat says about a process.
type Stat struct {
	PPid int
	// CPUTicks is user plus system time, in clock ticks.
	CPUTicks int64
}

// ParseStat parses the contents of /proc/PID/stat. The command name (the
// second field) may hold spaces and parentheses, so fields are counted
// from the last ')'.
func ParseStat(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, errors.New("parse stat: no command name")
	}
	// After ") ": state(3) ppid(4) ... utime(14) stime(15).
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return Stat{}, fmt.Errorf("parse stat: %d fields after the name", len(f))
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return Stat{}, fmt.Errorf("parse stat: ppid: %w", err)
	}
	utime, err := strconv.ParseInt(string(f[11]), 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("parse stat: utime: %w", err)
	}
	stime, err := strconv.ParseInt(string(f[12]), 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("parse stat: stime: %w", err)
	}
	return Stat{PPid: ppid, CPUTicks: utime + stime}, nil
}

// ParseRSS returns VmRSS in KiB from the contents of /proc/PID/status
// (0 for a kernel thread or zombie, which have none).
func ParseRSS(b []byte) (int64, error) {
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("parse status: VmRSS %q", line)
		}
		return strconv.ParseInt(string(f[0]), 10, 64)
	}
	return 0, nil
}

// Sample is one reading of a process.
type Sample struct {
	// CPUSeconds is the user and system time of the process and of all its
	// live descendants (PostgreSQL runs a process per connection).
	CPUSeconds float64
	// RSSKiB is the resident memory of the process itself.
	RSSKiB int64
}

// Read samples process pid under procDir (normally "/proc").
func Read(procDir string, pid int) (Sample, error) {
	b, err := os.ReadFile(filepath.Join(procDir, strconv.Itoa(pid), "stat"))
	if err != nil {
		return Sample{}, err
	}
	st, err := ParseStat(b)
	if err != nil {
		return Sample{}, err
	}
	b, err = os.ReadFile(filepath.Join(procDir, strconv.Itoa(pid), "status"))
	if err != nil {
		return Sample{}, err
	}
	rss, err := ParseRSS(b)
	if err != nil {
		return Sample{}, err
	}
	ticks := st.CPUTicks + descendantTicks(procDir, pid)
	return Sample{CPUSeconds: float64(ticks) / ClockTicks, RSSKiB: rss}, nil
}

// descendantTicks sums the CPU ticks of pid's live descendants.
func descendantTicks(procDir string, pid int) int64 {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return 0
	}
	children := map[int][]int{}
	ticks := map[int]int64{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procDir, e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		st, err := ParseStat(b)
		if err != nil {
			continue
		}
		children[st.PPid] = append(children[st.PPid], p)
		ticks[p] = st.CPUTicks
	}
	var sum int64
	stack := append([]int(nil), children[pid]...)
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		sum += ticks[p]
		stack = append(stack, children[p]...)
	}
	return sum
}

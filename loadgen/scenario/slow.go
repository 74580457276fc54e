package scenario

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
)

// SlowReport holds the two fanout runs of the slow scenario: the same load
// without and with a fraction of connections that never read.
type SlowReport struct {
	Scenario string        `json:"scenario"`
	Slow     float64       `json:"slow_fraction"`
	Baseline *FanoutReport `json:"baseline"`
	WithSlow *FanoutReport `json:"with_slow"`
	// P99Change is the change of the other connections' p99 latency, in
	// percent of the baseline's.
	P99Change float64 `json:"p99_change_percent"`
	// GatewayRSSGrowthKiB is, per gateway, the largest sample minus the
	// first during the run with slow connections.
	GatewayRSSGrowthKiB map[string]int64 `json:"gateway_rss_growth_kib"`
}

// RunSlow runs the fanout scenario twice, back to back: without slow
// connections, then with the fraction slow of them never reading, and
// compares the other connections' latency and the gateways' memory.
func RunSlow(ctx context.Context, cfg FanoutConfig, slow float64) (*SlowReport, error) {
	if slow <= 0 || slow >= 1 {
		return nil, fmt.Errorf("slow: the fraction of slow connections must be above 0 and below 1, not %g", slow)
	}
	rep := &SlowReport{Scenario: "slow", Slow: slow, GatewayRSSGrowthKiB: map[string]int64{}}
	base := cfg
	base.Slow = 0
	var err error
	if base.Log != nil {
		fmt.Fprintln(base.Log, "slow: the baseline, every connection reading ...")
	}
	if rep.Baseline, err = RunFanout(ctx, base); err != nil {
		return nil, fmt.Errorf("slow: baseline: %w", err)
	}
	with := cfg
	with.Slow = slow
	with.RunID = ""
	if with.Log != nil {
		fmt.Fprintf(with.Log, "slow: again with %.1f%% of the connections not reading ...\n", slow*100)
	}
	if rep.WithSlow, err = RunFanout(ctx, with); err != nil {
		return nil, fmt.Errorf("slow: with slow connections: %w", err)
	}
	if p := rep.Baseline.Latency.P99; p > 0 {
		rep.P99Change = (rep.WithSlow.Latency.P99 - p) * 100 / p
	}
	for name, s := range rep.WithSlow.GatewayRSSKiB {
		if len(s) > 0 {
			rep.GatewayRSSGrowthKiB[name] = slices.Max(s) - s[0]
		}
	}
	return rep, nil
}

// WriteTable writes both runs and the comparison.
func (rep *SlowReport) WriteTable(w io.Writer) {
	fmt.Fprintln(w, "scenario slow, baseline (every connection reading):")
	rep.Baseline.WriteTable(w)
	fmt.Fprintf(w, "\nscenario slow, with %.1f%% of the connections not reading:\n", rep.Slow*100)
	rep.WithSlow.WriteTable(w)
	fmt.Fprintln(w, "\nscenario slow: comparison")
	fmt.Fprintf(w, "  %-28s %.2f -> %.2f (%+.1f%%)\n", "others' p99 ms", rep.Baseline.Latency.P99, rep.WithSlow.Latency.P99, rep.P99Change)
	for _, name := range slices.Sorted(maps.Keys(rep.GatewayRSSGrowthKiB)) {
		fmt.Fprintf(w, "  %-28s %.1f\n", name+" RSS growth MiB", float64(rep.GatewayRSSGrowthKiB[name])/1024)
	}
}

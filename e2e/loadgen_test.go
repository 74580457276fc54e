package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/communications/communications/loadgen/scenario"
)

// TestLoadgenFanout runs the load generator's fanout scenario, small,
// against the stack: every acknowledged send reaches every member of its
// chat once and in order.
func TestLoadgenFanout(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := scenario.RunFanout(ctx, scenario.FanoutConfig{
		Target:   scenario.Target{Gateways: s.gateways},
		Chats:    2,
		Members:  3,
		Rate:     20,
		Duration: 2 * time.Second,
		Drain:    30 * time.Second,
		Sources:  2,
		Setup:    4,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Connections != 6 || rep.Sends != 40 {
		t.Errorf("connections %d, sends %d; want 6 and 40", rep.Connections, rep.Sends)
	}
	if rep.Acks != rep.Sends || len(rep.Errors) != 0 {
		t.Errorf("acks %d of %d sends, errors %v", rep.Acks, rep.Sends, rep.Errors)
	}
	if want := rep.Sends * 3; rep.Expected != want || rep.Received != want {
		t.Errorf("deliveries expected %d, received %d; want %d", rep.Expected, rep.Received, want)
	}
	if rep.Lost != 0 || rep.Duplicated != 0 || rep.OutOfOrder != 0 || rep.UnackedDelivered != 0 {
		t.Errorf("lost %d, duplicated %d, out of order %d, delivered without ack %d; want none",
			rep.Lost, rep.Duplicated, rep.OutOfOrder, rep.UnackedDelivered)
	}
	if rep.Latency.Max <= 0 || rep.Latency.P50 > rep.Latency.Max {
		t.Errorf("latency %+v: want recorded values", rep.Latency)
	}
	var loadgen bool
	for _, p := range rep.Processes {
		loadgen = loadgen || p.Name == "loadgen" && p.RSSAfterKiB > 0
	}
	if !loadgen {
		t.Errorf("processes %+v: want the load generator's own row", rep.Processes)
	}
}

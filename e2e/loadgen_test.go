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
	if rep.AckLatency.Max <= 0 || rep.AckLatency.P50 > rep.AckLatency.Max {
		t.Errorf("ack latency %+v: want recorded values", rep.AckLatency)
	}
	var loadgen bool
	for _, p := range rep.Processes {
		loadgen = loadgen || p.Name == "loadgen" && p.RSSAfterKiB > 0
	}
	if !loadgen {
		t.Errorf("processes %+v: want the load generator's own row", rep.Processes)
	}
}

// target is the stack as the load generator's scenarios see it.
func (s *stack) target() scenario.Target {
	return scenario.Target{Gateways: s.gateways, Postgres: s.postgresURL, NATS: s.natsURL, Redis: s.redisURL,
		SubjectPrefix: s.prefix, RedisPrefix: s.redisPrefix}
}

// TestLoadgenWriter runs the writer scenario small: a backlog published
// while the load generator holds the history writers' lock is stored once
// it releases it, and messages published at a rate (as the chat service
// publishes) are stored and fanned out; nothing is lost or stored twice.
func TestLoadgenWriter(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := scenario.RunWriter(ctx, scenario.WriterConfig{
		Target: s.target(), Chats: 2, Backlog: 300, Rate: 100, Duration: time.Second, Timeout: time.Minute, Setup: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.BacklogStored != 300 || rep.BacklogLost != 0 || rep.BacklogDuplicated != 0 || rep.BacklogPublishErrs != 0 {
		t.Errorf("backlog: stored %d of 300, lost %d, duplicated %d, publish errors %d (%s)",
			rep.BacklogStored, rep.BacklogLost, rep.BacklogDuplicated, rep.BacklogPublishErrs, rep.PublishError)
	}
	if rep.BacklogStoredPerS <= 0 {
		t.Errorf("backlog stored at %v/s, want a rate", rep.BacklogStoredPerS)
	}
	if rep.Published != 100 || rep.Acked != 100 || rep.Stored != 100 || rep.Lost != 0 || rep.Duplicated != 0 {
		t.Errorf("rate: published %d, acked %d, stored %d, lost %d, duplicated %d; want 100 acked and stored, none lost or twice",
			rep.Published, rep.Acked, rep.Stored, rep.Lost, rep.Duplicated)
	}
	if rep.CommitLatency.Max <= 0 {
		t.Errorf("accept to commit latency %+v: want recorded values", rep.CommitLatency)
	}
}

// TestLoadgenHistory runs the history scenario small: a seeded chat's
// pages come back full through the gateways' HTTP API.
func TestLoadgenHistory(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := scenario.HistoryConfig{Target: s.target(), Messages: 500, Members: 3, Limit: 50, Rate: 50, Duration: time.Second,
		Warmup: 500 * time.Millisecond, Setup: 3}
	rep, err := scenario.RunHistory(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The warm-up's 25 requests are not counted.
	if rep.SeededNow != 500 || rep.Requests != 50 || rep.OK != 50 || rep.ShortPages != 0 || len(rep.Errors) != 0 {
		t.Errorf("seeded %d, requests %d, ok %d, short pages %d, errors %v; want 500 seeded and 50 full pages",
			rep.SeededNow, rep.Requests, rep.OK, rep.ShortPages, rep.Errors)
	}
	if rep.Latency.Max <= 0 {
		t.Errorf("latency %+v: want recorded values", rep.Latency)
	}
	if rep.WarmupRequests != 25 || len(rep.WarmupErrors) != 0 {
		t.Errorf("warm-up: %d requests, errors %v; want 25 without error", rep.WarmupRequests, rep.WarmupErrors)
	}
	// A second run, without the warm-up at rate, finds the chat seeded;
	// its first pages, one after the other, open one connection to each
	// gateway.
	cfg.Warmup = -1
	rep, err = scenario.RunHistory(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.SeededNow != 0 || rep.OK != 50 || rep.WarmupRequests != 0 || rep.WarmupConns != int64(len(cfg.Gateways)) {
		t.Errorf("second run: seeded %d, ok %d, warm-up requests %d, connections before measuring %d; want nothing seeded, 50 pages, no warm-up, one connection to each of %d gateways",
			rep.SeededNow, rep.OK, rep.WarmupRequests, rep.WarmupConns, len(cfg.Gateways))
	}
}

// TestLoadgenSlow runs the slow scenario small: with a fifth of the
// connections never reading, the others still get every message.
func TestLoadgenSlow(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := scenario.RunSlow(ctx, scenario.FanoutConfig{
		Target: s.target(), Chats: 2, Members: 5, Rate: 20, Duration: 2 * time.Second, Drain: 30 * time.Second, Sources: 2, Setup: 4,
	}, 0.2)
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*scenario.FanoutReport{"baseline": rep.Baseline, "with slow": rep.WithSlow} {
		if r.Acks != r.Sends || r.Lost != 0 || r.Duplicated != 0 || r.OutOfOrder != 0 || r.Received != r.Expected {
			t.Errorf("%s: acks %d of %d sends, lost %d, duplicated %d, out of order %d, received %d of %d",
				name, r.Acks, r.Sends, r.Lost, r.Duplicated, r.OutOfOrder, r.Received, r.Expected)
		}
	}
	if rep.WithSlow.SlowConnections != 2 || rep.WithSlow.Expected != rep.WithSlow.Sends*4 {
		t.Errorf("slow connections %d, deliveries expected %d; want 2 slow and 4 readers per chat",
			rep.WithSlow.SlowConnections, rep.WithSlow.Expected)
	}
}

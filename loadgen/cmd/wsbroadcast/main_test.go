package main

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/communications/communications/loadgen/scenario"
)

// TestBroadcastScenario runs the load generator's broadcast scenario,
// small, against the server: every send reaches every member of its room
// once, and nothing else arrives.
func TestBroadcastScenario(t *testing.T) {
	srv := httptest.NewServer(newServer(256))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := scenario.RunBroadcast(ctx, scenario.BroadcastConfig{
		Target: scenario.Target{Gateways: []string{srv.URL}},
		Rooms:  3, Members: 4, Rate: 60, Duration: time.Second, Drain: 20 * time.Second, Sources: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sends != 60 || rep.WriteErrors != 0 {
		t.Errorf("sends %d, write errors %d; want 60 and 0", rep.Sends, rep.WriteErrors)
	}
	if want := rep.Sends * 4; rep.Expected != want || rep.Received != want {
		t.Errorf("deliveries expected %d, received %d; want %d", rep.Expected, rep.Received, want)
	}
	if rep.Lost != 0 || rep.Duplicated != 0 || rep.Undecoded != 0 {
		t.Errorf("lost %d, duplicated %d, undecodable %d; want none", rep.Lost, rep.Duplicated, rep.Undecoded)
	}
	if rep.Latency.Max <= 0 {
		t.Errorf("no latency recorded: %+v", rep.Latency)
	}
}

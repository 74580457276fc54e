package faults

import (
	"context"
	"testing"
	"time"

	loadgen "github.com/communications/communications/loadgen/scenario"
)

// TestLoadgenStorm runs the load generator's reconnect storm small: the
// clients of a gateway killed with SIGKILL all resume on the other one,
// and every acknowledged message reaches each of them once, in order.
func TestLoadgenStorm(t *testing.T) {
	s := startStack(t, stackOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := loadgen.RunStorm(ctx, loadgen.StormConfig{
		Target:  loadgen.Target{Gateways: s.gateways()},
		Clients: 20, Chats: 2, Members: 5, Rate: 20,
		Before: time.Second, After: time.Second, BackoffMin: 200 * time.Millisecond, Timeout: time.Minute, Drain: 30 * time.Second,
		Sources: 2, Setup: 4,
		Kill: func() error { s.kill("gateway-1"); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Resumed != 20 || rep.NotResumed != 0 || rep.AllResumedSec <= 0 {
		t.Errorf("resumed %d, not resumed %d, all after %.2f s; want all 20", rep.Resumed, rep.NotResumed, rep.AllResumedSec)
	}
	if rep.Sends == 0 || rep.Acks != rep.Sends || len(rep.Errors) != 0 {
		t.Errorf("acks %d of %d sends, errors %v", rep.Acks, rep.Sends, rep.Errors)
	}
	if want := rep.Acks * 10; rep.Expected != want || rep.Received != want {
		t.Errorf("deliveries expected %d, received %d; want %d (10 clients per chat)", rep.Expected, rep.Received, want)
	}
	if rep.Lost != 0 || rep.Duplicated != 0 || rep.OutOfOrder != 0 || rep.UnackedDelivered != 0 {
		t.Errorf("lost %d, duplicated %d, out of order %d, delivered without ack %d; want none",
			rep.Lost, rep.Duplicated, rep.OutOfOrder, rep.UnackedDelivered)
	}
}

// TestStormAdmission: the reconnect storm against gateways that set up
// few connections at once. With a queue, every client waits its turn and
// resumes at the first attempt, none closed for a timeout; with a queue too
// short for the storm, the clients past it are refused with 503, come back
// after the web app's backoff, and resume all the same; nothing is lost
// either way.
func TestStormAdmission(t *testing.T) {
	tests := []struct {
		name        string
		concurrency string
		queue       string
		refused     bool
	}{
		{name: "queued", concurrency: "2", queue: "1000"},
		// (the clients first connect one at a time)
		{name: "queue full", concurrency: "1", queue: "1", refused: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startStack(t, stackOptions{env: map[string]string{
				"GATEWAY_SETUP_CONCURRENCY": tc.concurrency, "GATEWAY_SETUP_QUEUE": tc.queue,
			}})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			setup := 4
			if tc.refused {
				setup = 1
			}
			rep, err := loadgen.RunStorm(ctx, loadgen.StormConfig{
				Target:  loadgen.Target{Gateways: s.gateways()},
				Clients: 100, Chats: 2, Members: 10, Rate: 20,
				Before: time.Second, After: time.Second, BackoffMin: 200 * time.Millisecond, BackoffMax: time.Second,
				Timeout: time.Minute, Drain: 30 * time.Second, Sources: 2, Setup: setup,
				Kill: func() error { s.kill("gateway-1"); return nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Resumed != 100 || rep.NotResumed != 0 {
				t.Errorf("resumed %d, not resumed %d; want all 100", rep.Resumed, rep.NotResumed)
			}
			refused := rep.ReconnectErrors["http_503"]
			if tc.refused && refused == 0 {
				t.Errorf("no reconnect refused with a queue of 1 (failures %v)", rep.ReconnectErrors)
			}
			for cause, n := range rep.ReconnectErrors {
				if !tc.refused || cause != "http_503" {
					t.Errorf("%d reconnects failed with %s; want none but the 503s of a full queue", n, cause)
				}
			}
			if rep.Sends == 0 || rep.Acks != rep.Sends || len(rep.Errors) != 0 {
				t.Errorf("acks %d of %d sends, errors %v", rep.Acks, rep.Sends, rep.Errors)
			}
			if rep.Lost != 0 || rep.Duplicated != 0 || rep.OutOfOrder != 0 || rep.Expected != rep.Received {
				t.Errorf("lost %d, duplicated %d, out of order %d, received %d of %d; want none lost",
					rep.Lost, rep.Duplicated, rep.OutOfOrder, rep.Received, rep.Expected)
			}
		})
	}
}

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

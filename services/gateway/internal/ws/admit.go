package ws

import (
	"context"
	"errors"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// ErrBusy is returned by Admit when as many set-ups wait as the queue
// holds: the client should come back after a backoff.
var ErrBusy = errors.New("too many connections being set up; reconnect later")

// admission bounds the connection set-ups a server runs at once (asking
// auth for the session, the upgrade, the chats, the Redis subscriptions,
// hello) and queues the rest first come, first served. When a gateway dies,
// its clients all reconnect to the others within a second or two: set up all
// at once, each would take as long as all of them together, and past the
// set-up's timeouts they would be closed and come back again. Queued, they
// are set up a bounded number at a time, each as fast as alone, and a
// client's wait in the queue counts against no timeout of the gateway.
type admission struct {
	// slots is a FIFO semaphore: waiters are served in the order they came.
	slots    *semaphore.Weighted
	queued   atomic.Int64
	maxQueue int64
	// drain is cancelled when the server starts draining: every waiter
	// leaves the queue with ErrDraining.
	drain     context.Context
	stopDrain context.CancelFunc
}

func newAdmission(concurrency, queue int) *admission {
	drain, stop := context.WithCancel(context.Background())
	return &admission{slots: semaphore.NewWeighted(int64(concurrency)), maxQueue: int64(queue), drain: drain, stopDrain: stop}
}

// Admit waits, first come first served, until fewer than Config.SetupConcurrency
// set-ups are running, and returns the function that ends this one (call it
// once Serve has returned). It refuses at once with ErrBusy when
// Config.SetupQueue set-ups wait already, and returns ErrDraining when the
// server drains and ctx's error when ctx ends (the client went away) while
// waiting.
func (s *Server) Admit(ctx context.Context) (func(), error) {
	a := s.admission
	if a.drain.Err() != nil {
		return nil, ErrDraining
	}
	// Without waiters, a free slot is taken at once.
	if a.slots.TryAcquire(1) {
		return s.admitted(), nil
	}
	if a.queued.Add(1) > a.maxQueue {
		a.queued.Add(-1)
		s.metrics.setupsRefused.Inc()
		return nil, ErrBusy
	}
	s.metrics.setupsWaiting.Inc()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(a.drain, cancel)
	err := a.slots.Acquire(ctx, 1)
	stop()
	cancel()
	a.queued.Add(-1)
	s.metrics.setupsWaiting.Dec()
	if err != nil {
		if a.drain.Err() != nil {
			return nil, ErrDraining
		}
		return nil, err
	}
	if a.drain.Err() != nil {
		a.slots.Release(1)
		return nil, ErrDraining
	}
	return s.admitted(), nil
}

// admitted returns the release of a slot just taken, which frees it once.
func (s *Server) admitted() func() {
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			s.admission.slots.Release(1)
		}
	}
}

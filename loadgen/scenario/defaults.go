package scenario

import (
	"context"
	"strconv"
	"time"
)

// setDefault sets *v to def when it holds its type's zero value: the
// scenarios' configurations fill their unset fields with it.
func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// newRunID returns a run id that makes chat names and client message ids
// unique: the time in milliseconds, base 36.
func newRunID() string { return strconv.FormatInt(time.Now().UnixNano()/1e6, 36) }

// openLoop calls each for i = 0 .. total-1 at its intended time, start +
// i/rate with start 10 ms from now. The loop is open: a call made late is
// not made up for by spacing the next ones, so a slow system shows as
// latency, not as a lower rate. It stops early when ctx ends and returns
// how many calls it made and the time since start.
func openLoop(ctx context.Context, rate float64, total int64, each func(i int64, intended time.Time)) (int64, time.Duration) {
	interval := float64(time.Second) / rate
	start := time.Now().Add(10 * time.Millisecond)
	var i int64
	for ; i < total; i++ {
		intended := start.Add(time.Duration(float64(i) * interval))
		if !sleepCtx(ctx, time.Until(intended)) {
			break
		}
		each(i, intended)
	}
	return i, time.Since(start)
}

// sleepCtx waits for d, and reports false when ctx ended first (or had
// already ended when d is not positive).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

package writer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// WatchLag sets the gauge history_writer_consumer_lag_messages to the
// messages of the stream not stored yet (its last sequence minus the
// stored position), read every Config.LagInterval, until ctx ends. A failed
// read is logged and leaves the gauge as it was. It returns nil when ctx
// ends.
func (w *Writer) WatchLag(ctx context.Context) error {
	tick := time.NewTicker(w.cfg.LagInterval)
	defer tick.Stop()
	for {
		if err := w.readLag(ctx); err != nil && ctx.Err() == nil {
			w.log.WarnContext(ctx, "read the writer's lag", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (w *Writer) readLag(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, min(w.cfg.LagInterval, 5*time.Second))
	defer cancel()
	st, err := w.js.Stream(ctx, w.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// Not created yet: nothing is pending.
		w.m.lag.Set(0)
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up stream %s: %w", w.cfg.Stream, err)
	}
	state := st.CachedInfo().State
	pos, ok, err := w.store.StoredPosition(ctx, w.cfg.Stream)
	if err != nil {
		return err
	}
	if !ok || pos+1 < state.FirstSeq || pos > state.LastSeq {
		// Not started on this stream yet, or a stream created again (the
		// position is another stream's): everything it holds is pending.
		w.m.lag.Set(float64(state.Msgs))
		return nil
	}
	w.m.lag.Set(float64(state.LastSeq - pos))
	return nil
}

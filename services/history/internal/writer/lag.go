package writer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// WatchLag sets the gauge history_writer_consumer_lag_messages to the
// writer consumer's pending plus ack-pending messages (what the stream
// holds that is not stored yet), read every Config.LagInterval, until ctx
// ends. A failed read is logged and leaves the gauge as it was. It returns
// nil when ctx ends.
func (w *Writer) WatchLag(ctx context.Context) error {
	tick := time.NewTicker(w.cfg.LagInterval)
	defer tick.Stop()
	for {
		if err := w.readLag(ctx); err != nil && ctx.Err() == nil {
			w.log.WarnContext(ctx, "read the writer consumer's lag", "err", err)
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
	cons, err := w.js.Consumer(ctx, w.cfg.Stream, w.cfg.Consumer)
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) {
		// Not created yet (Run waits for the stream and creates the
		// consumer): nothing is pending.
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up consumer %s: %w", w.cfg.Consumer, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("consumer %s info: %w", w.cfg.Consumer, err)
	}
	w.m.lag.Set(float64(info.NumPending) + float64(info.NumAckPending))
	return nil
}

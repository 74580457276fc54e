package writer

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the writer's Prometheus metrics.
type metrics struct {
	batchMessages prometheus.Histogram
	commitSeconds prometheus.Histogram
	lag           prometheus.Gauge
	stored        prometheus.Counter
	duplicates    prometheus.Counter
	rejected      prometheus.Counter
	failedBatches prometheus.Counter
	malformed     prometheus.Counter
	skipped       prometheus.Counter
	fanoutErrors  prometheus.Counter
	leader        prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		batchMessages: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "history_writer_batch_messages",
			Help:    "Messages per batch fetched from the message stream.",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000},
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "history_writer_commit_duration_seconds",
			Help:    "Time to store one batch in PostgreSQL, transaction begin to commit.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5ms to 4s
		}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "history_writer_consumer_lag_messages",
			Help: "Messages of the stream not yet stored: the stream's last sequence minus the writer's stored position, polled every few seconds (every replica reports the same figure).",
		}),
		stored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "history_writer_messages_stored_total",
			Help: "Messages stored with a new sequence number.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "history_writer_duplicates_total",
			Help: "Messages already stored (retries, and messages read again after a writer took over) that kept their original sequence number.",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "history_writer_changes_rejected_total",
			Help: "Edits and deletions not stored because their target was missing, another user's or deleted (a race the chat service's check cannot see).",
		}),
		failedBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "history_writer_failed_batches_total",
			Help: "Batches whose transaction failed (tried again), or found the stream position moved by another writer.",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "history_writer_malformed_messages_total",
			Help: "Stream messages that could not be decoded and were skipped.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "history_writer_missing_messages_total",
			Help: "Stream sequences gone from the stream before the writer stored them (changed from outside: a purge, a deletion).",
		}),
		fanoutErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "history_writer_fanout_errors_total",
			Help: "Batches whose stored messages could not all be published for fanout.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "history_writer_leader",
			Help: "1 while this replica holds the writers' lock (it is the one storing), else 0.",
		}),
	}
	for _, c := range []prometheus.Collector{m.batchMessages, m.commitSeconds, m.lag, m.stored, m.duplicates, m.rejected, m.failedBatches, m.malformed, m.skipped, m.fanoutErrors, m.leader} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register writer metrics: %w", err)
		}
	}
	return m, nil
}

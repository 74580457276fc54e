package writer

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/communications/communications/libs/subjects"
)

// The writers' lock: the key subjects.HistoryWriterLockKey of a JetStream
// key-value bucket whose TTL is Config.LeaderTTL. The holder renews it
// every third of the TTL and deletes it when it stops; the others watch the
// key and create it when it is deleted or has expired. The lock only keeps
// the standby replicas idle: correctness rests on the position's compare
// and set in PostgreSQL (StoreBatchAt), so a holder that lost the lock
// without knowing it cannot store anything out of order or twice.

// lockBucket declares the lock's bucket (memory storage: the lock is lost
// with the server, and taken again).
func (w *Writer) lockBucket(ctx context.Context) (jetstream.KeyValue, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return w.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      w.cfg.Lock,
		Description: "History writers' lock: the replica holding key leader stores messages.",
		TTL:         w.cfg.LeaderTTL,
		History:     1,
		Storage:     jetstream.MemoryStorage,
	})
}

// leadership is a held lock. Its renewals (renew) own rev and lost until
// done is closed; release reads them after that.
type leadership struct {
	ctx    context.Context // ends when the lock is lost or released
	cancel context.CancelFunc
	done   chan struct{} // closed when the renewals stopped
	kv     jetstream.KeyValue
	rev    uint64 // the key's revision this replica wrote last
	lost   bool   // the renewals stopped because the lock was lost
}

// acquire waits until this replica holds the lock and returns it; false
// when ctx ended first.
func (w *Writer) acquire(ctx context.Context) (*leadership, bool) {
	retry := backoff{min: w.cfg.RetryMin, max: w.cfg.RetryMax}
	logged := false
	for ctx.Err() == nil {
		kv, err := w.lockBucket(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			w.log.WarnContext(ctx, "declare the history writers' lock bucket; retrying", "bucket", w.cfg.Lock, "err", err, "retry_in", retry.delay())
			if !sleep(ctx, retry.delay()) {
				break
			}
			retry.grow()
			continue
		}
		if l, ok := w.contend(ctx, kv, &logged); ok {
			return l, true
		}
		if !sleep(ctx, retry.delay()) {
			break
		}
		retry.grow()
	}
	return nil, false
}

// contend tries to create the lock key until it succeeds (true), ctx ends,
// or the bucket fails (false). It tries again at once when the key is
// deleted, and every quarter of the TTL (an expired key sends no event).
func (w *Writer) contend(ctx context.Context, kv jetstream.KeyValue, logged *bool) (*leadership, bool) {
	var updates <-chan jetstream.KeyValueEntry
	if watch, err := kv.Watch(ctx, subjects.HistoryWriterLockKey, jetstream.UpdatesOnly()); err == nil {
		defer func() { _ = watch.Stop() }()
		updates = watch.Updates()
	}
	tick := time.NewTicker(max(w.cfg.LeaderTTL/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		rev, err := kv.Create(ctx, subjects.HistoryWriterLockKey, []byte(w.cfg.ID))
		if err == nil {
			w.leader.Set(1)
			w.log.InfoContext(ctx, "history writer holds the writers' lock", "id", w.cfg.ID)
			*logged = false
			lctx, cancel := context.WithCancel(ctx)
			l := &leadership{ctx: lctx, cancel: cancel, done: make(chan struct{}), kv: kv, rev: rev}
			go w.renew(l)
			return l, true
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			if ctx.Err() == nil {
				w.log.WarnContext(ctx, "take the history writers' lock", "err", err)
			}
			return nil, false
		}
		if !*logged {
			*logged = true
			holder := ""
			if e, err := kv.Get(ctx, subjects.HistoryWriterLockKey); err == nil {
				holder = string(e.Value())
			}
			w.log.InfoContext(ctx, "history writer standing by: another replica holds the writers' lock", "holder", holder)
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-tick.C:
		case _, ok := <-updates:
			if !ok {
				updates = nil // the watcher ended; the ticker goes on
			}
		}
	}
}

// renew keeps l's key alive every third of the TTL until l ends, and ends
// l when the key changes hands, is deleted, or cannot be renewed for two
// thirds of the TTL (it expires at the TTL, and a standby takes it).
func (w *Writer) renew(l *leadership) {
	defer close(l.done)
	defer l.cancel()
	defer w.leader.Set(0)
	var updates <-chan jetstream.KeyValueEntry
	if watch, err := l.kv.Watch(l.ctx, subjects.HistoryWriterLockKey, jetstream.UpdatesOnly()); err == nil {
		defer func() { _ = watch.Stop() }()
		updates = watch.Updates()
	}
	ttl := w.cfg.LeaderTTL
	tick := time.NewTicker(max(ttl/3, 10*time.Millisecond))
	defer tick.Stop()
	renewed := time.Now()
	for {
		select {
		case <-l.ctx.Done():
			return
		case e, ok := <-updates:
			if !ok {
				updates = nil
				continue
			}
			if e != nil && (e.Operation() != jetstream.KeyValuePut || string(e.Value()) != w.cfg.ID) {
				w.log.WarnContext(l.ctx, "history writer lost the writers' lock: the key changed", "op", e.Operation().String(), "holder", string(e.Value()))
				l.lost = true
				return
			}
		case <-tick.C:
			ctx, cancel := context.WithTimeout(l.ctx, ttl/3)
			next, err := l.kv.Update(ctx, subjects.HistoryWriterLockKey, []byte(w.cfg.ID), l.rev)
			cancel()
			if err == nil {
				l.rev = next
				renewed = time.Now()
				continue
			}
			if l.ctx.Err() != nil {
				return
			}
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) || time.Since(renewed) >= ttl*2/3 {
				w.log.WarnContext(l.ctx, "history writer lost the writers' lock", "err", err, "since_renewed", time.Since(renewed))
				l.lost = true
				return
			}
			w.log.WarnContext(l.ctx, "renew the history writers' lock; trying again", "err", err)
		}
	}
}

// release stops l's renewals and deletes the key if it is still this
// replica's, so that a standby takes over at once.
func (w *Writer) release(l *leadership) {
	l.cancel()
	<-l.done
	if l.lost {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := l.kv.Delete(ctx, subjects.HistoryWriterLockKey, jetstream.LastRevision(l.rev)); err != nil {
		w.log.Warn("release the history writers' lock; it expires by itself", "err", err)
		return
	}
	w.log.Info("history writer released the writers' lock", "id", w.cfg.ID)
}

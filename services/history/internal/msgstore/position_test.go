package msgstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/communications/communications/services/history/internal/history"
)

// TestPosition: a stream seen first starts before its first message; the
// position stays under the same epoch and resets under another (a stream
// created again).
func TestPosition(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t)
	ctx := context.Background()
	if _, ok, err := store.StoredPosition(ctx, "S"); err != nil || ok {
		t.Fatalf("stored position before any: ok=%v err=%v, want none", ok, err)
	}
	if pos, err := store.Position(ctx, "S", 100, 7); err != nil || pos != 6 {
		t.Fatalf("first position = %d, %v; want 6 (before first seq 7)", pos, err)
	}
	if _, err := store.StoreBatchAt(ctx, []history.Message{msg(1, 1, "a", "a")}, history.Advance{Stream: "S", Epoch: 100, From: 6, To: 9}); err != nil {
		t.Fatal(err)
	}
	if pos, err := store.Position(ctx, "S", 100, 1); err != nil || pos != 9 {
		t.Errorf("position under the same epoch = %d, %v; want 9", pos, err)
	}
	if pos, ok, err := store.StoredPosition(ctx, "S"); err != nil || !ok || pos != 9 {
		t.Errorf("stored position = %d, %v, %v; want 9", pos, ok, err)
	}
	if pos, err := store.Position(ctx, "S", 200, 1); err != nil || pos != 0 {
		t.Errorf("position under a new epoch = %d, %v; want 0", pos, err)
	}
	// The old epoch's writer can no longer move it.
	if _, err := store.StoreBatchAt(ctx, []history.Message{msg(1, 1, "b", "b")}, history.Advance{Stream: "S", Epoch: 100, From: 9, To: 10}); !errors.Is(err, history.ErrPositionMoved) {
		t.Errorf("store under the old epoch: %v, want ErrPositionMoved", err)
	}
	noOpenTransaction(t, pool)
	// A writer with the older epoch does not set the position back.
	if _, err := store.StoreBatchAt(ctx, nil, history.Advance{Stream: "S", Epoch: 200, From: 0, To: 4}); err != nil {
		t.Fatal(err)
	}
	if pos, err := store.Position(ctx, "S", 100, 1); err != nil || pos != 4 {
		t.Errorf("position read under an older epoch = %d, %v; want 4, the newer epoch's, unchanged", pos, err)
	}
	if _, err := store.StoreBatchAt(ctx, nil, history.Advance{Stream: "S", Epoch: 100, From: 4, To: 5}); !errors.Is(err, history.ErrPositionMoved) {
		t.Errorf("store under the older epoch after reading the position: %v, want ErrPositionMoved", err)
	}
	if pos, err := store.Position(ctx, "T", 1, 0); err != nil || pos != 0 {
		t.Errorf("position of an empty new stream = %d, %v; want 0", pos, err)
	}
}

// TestPositionConcurrent: writers reading a new stream's position at once
// all get it.
func TestPositionConcurrent(t *testing.T) {
	t.Parallel()
	store, _ := newStore(t)
	ctx := context.Background()
	for epoch := range int64(5) {
		var wg sync.WaitGroup
		errs := make([]error, 20)
		for i := range errs {
			wg.Go(func() {
				var pos uint64
				pos, errs[i] = store.Position(ctx, "S", epoch, 1)
				if errs[i] == nil && pos != 0 {
					errs[i] = fmt.Errorf("position %d, want 0", pos)
				}
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Errorf("epoch %d: %v", epoch, err)
			}
		}
	}
}

// TestStoreBatchAtMovesThePositionOnce: writers racing over the same stream
// range store it once; the losers get ErrPositionMoved and store nothing;
// a batch of only duplicates still moves the position.
func TestStoreBatchAtMovesThePositionOnce(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t)
	ctx := context.Background()
	if _, err := store.Position(ctx, "S", 1, 1); err != nil {
		t.Fatal(err)
	}
	var batch []history.Message
	for i := range 20 {
		batch = append(batch, msg(int64(i%3+1), 1, fmt.Sprint("m", i), "x"))
	}
	const writers = 6
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for w := range writers {
		wg.Go(func() {
			_, errs[w] = store.StoreBatchAt(ctx, batch, history.Advance{Stream: "S", Epoch: 1, From: 0, To: 20})
		})
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, history.ErrPositionMoved):
			t.Errorf("racing writer: %v, want nil or ErrPositionMoved", err)
		}
	}
	if won != 1 {
		t.Errorf("%d writers stored the batch, want 1", won)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM messages`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 20 {
		t.Errorf("%d rows stored, want 20", n)
	}
	// A batch of duplicates only: nothing new, the position moves.
	stored, err := store.StoreBatchAt(ctx, batch[:2], history.Advance{Stream: "S", Epoch: 1, From: 20, To: 22})
	if err != nil || !stored[0].Duplicate || !stored[1].Duplicate {
		t.Fatalf("duplicates batch: %v, %v", seqs(stored), err)
	}
	if pos, _, err := store.StoredPosition(ctx, "S"); err != nil || pos != 22 {
		t.Errorf("position after the duplicates = %d, %v; want 22", pos, err)
	}
	// An empty batch (all malformed) moves it too.
	if _, err := store.StoreBatchAt(ctx, nil, history.Advance{Stream: "S", Epoch: 1, From: 22, To: 23}); err != nil {
		t.Fatal(err)
	}
	if pos, _, err := store.StoredPosition(ctx, "S"); err != nil || pos != 23 {
		t.Errorf("position after an empty batch = %d, %v; want 23", pos, err)
	}
}

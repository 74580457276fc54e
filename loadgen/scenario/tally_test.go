package scenario

import (
	"strings"
	"testing"
)

func TestSeqTally(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		seqs                      []int64
		received, dup, outOfOrder int64
	}{
		"in order":            {seqs: []int64{1, 2, 3, 4}, received: 4},
		"gaps are not errors": {seqs: []int64{2, 5, 9, 200}, received: 4},
		"duplicate":           {seqs: []int64{1, 2, 2, 3, 1}, received: 3, dup: 2},
		"out of order":        {seqs: []int64{1, 3, 2, 4}, received: 4, outOfOrder: 1},
		"late and duplicated": {seqs: []int64{1, 3, 2, 2}, received: 3, dup: 1, outOfOrder: 1},
		"zero seq":            {seqs: []int64{0, 1}, received: 1, outOfOrder: 1},
		"large seq":           {seqs: []int64{1000, 1000, 999}, received: 2, dup: 1, outOfOrder: 1},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var tl seqTally
			for _, s := range tc.seqs {
				tl.observe(s)
			}
			if tl.received != tc.received || tl.duplicated != tc.dup || tl.outOfOrder != tc.outOfOrder {
				t.Errorf("received %d dup %d out of order %d; want %d %d %d",
					tl.received, tl.duplicated, tl.outOfOrder, tc.received, tc.dup, tc.outOfOrder)
			}
		})
	}
}

func TestParseGoroutines(t *testing.T) {
	t.Parallel()
	metrics := "# HELP go_goroutines Number of goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 30042\ngo_threads 9\n"
	if n, err := parseGoroutines(strings.NewReader(metrics)); err != nil || n != 30042 {
		t.Errorf("parseGoroutines = %d, %v; want 30042", n, err)
	}
	if _, err := parseGoroutines(strings.NewReader("go_threads 9\n")); err == nil {
		t.Error("no error without go_goroutines")
	}
}

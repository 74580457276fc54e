package scenario

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
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

func TestDeliveries(t *testing.T) {
	t.Parallel()
	// Two chats of two members; sends 0..5: even ones to chat 0 (numbers
	// 0, 1, 2), odd ones to chat 1. Send 3 failed (no ack).
	acked := []bool{true, true, true, false, true, true}
	chatOf := []int{0, 0, 1, 1}
	set := func(nums ...int64) bitset {
		var b bitset
		for _, n := range nums {
			b.add(n)
		}
		return b
	}
	for name, tc := range map[string]struct {
		got           []bitset
		lost, unacked int64
	}{
		"all delivered":          {got: []bitset{set(0, 1, 2), set(0, 1, 2), set(0, 2), set(0, 2)}},
		"one lost":               {got: []bitset{set(0, 2), set(0, 1, 2), set(0, 2), set(0, 2)}, lost: 1},
		"unacked send delivered": {got: []bitset{set(0, 1, 2), set(0, 1, 2), set(0, 1, 2), set(0, 2)}, unacked: 1},
		"nothing received":       {got: []bitset{nil, nil, nil, nil}, lost: 10},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			lost, unacked := deliveries(tc.got, chatOf, acked, 2)
			if lost != tc.lost || unacked != tc.unacked {
				t.Errorf("lost %d, unacked delivered %d; want %d, %d", lost, unacked, tc.lost, tc.unacked)
			}
		})
	}
}

func TestSendIndex(t *testing.T) {
	t.Parallel()
	prefix := []byte("lg-abc-")
	for raw, want := range map[string]int64{`"lg-abc-0"`: 0, `"lg-abc-12345"`: 12345, `"lg-xyz-1"`: -1, `"lg-abc-"`: -1, `"lg-abc-1x"`: -1, `""`: -1, ``: -1} {
		if got := sendIndex([]byte(raw), prefix); got != want {
			t.Errorf("sendIndex(%s) = %d, want %d", raw, got, want)
		}
	}
}

func TestTokenCache(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	c, err := loadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.get("alice"); ok {
		t.Error("a new cache has a token")
	}
	c.put("alice", "t1")
	if err := c.save(); err != nil {
		t.Fatal(err)
	}
	c2, err := loadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	if tok, ok := c2.get("alice"); !ok || tok != "t1" {
		t.Errorf("reloaded token %q, %v; want t1", tok, ok)
	}
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadTokens(path); err == nil {
		t.Error("no error for a corrupt file")
	}
}

func TestWorstSeconds(t *testing.T) {
	shards := make([]shard, 2)
	for i := range shards {
		shards[i].h = hdrhistogram.New(1, 60_000_000, 3)
	}
	at := func(sec int64) []byte { return []byte(`"lg:` + strconv.FormatInt(sec*1e9+5e8, 10) + `"`) }
	// Sends intended in seconds 100 to 103, received 1 ms to 400 ms later.
	shards[0].recordStamp(at(100), 100*1e9+5e8+1e6)
	shards[1].recordStamp(at(100), 100*1e9+5e8+300e6)
	shards[0].recordStamp(at(101), 101*1e9+5e8+2e6)
	shards[1].recordStamp(at(102), 102*1e9+5e8+400e6)
	shards[0].recordStamp(at(103), 103*1e9+5e8+50e6)
	got := worstSeconds(shards, 3)
	want := []WorstSecond{{time.Unix(102, 0).UTC(), 400}, {time.Unix(100, 0).UTC(), 300}, {time.Unix(103, 0).UTC(), 50}}
	if !slices.Equal(got, want) {
		t.Errorf("worst seconds %v, want %v", got, want)
	}
	if n := len(worstSeconds(shards[:1], 10)); n != 3 {
		t.Errorf("%d seconds from one shard, want 3", n)
	}
}

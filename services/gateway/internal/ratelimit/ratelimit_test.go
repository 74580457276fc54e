package ratelimit

import (
	"context"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/communications/communications/libs/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestLimiter(t *testing.T) {
	t.Parallel()
	url, prefix := testenv.Redis(t)
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	l := PerMinute(rdb, prefix, 3)
	// Another replica shares the counters through Redis.
	other := PerMinute(rdb, prefix, 3)

	check := func(lim *Limiter, key string, n int, want bool) {
		t.Helper()
		ok, retry, err := lim.Allow(ctx, key, n)
		if err != nil {
			t.Fatal(err)
		}
		if ok != want {
			t.Fatalf("Allow(%s, %d) = %v (retry after %s), want %v", key, n, ok, retry, want)
		}
		if !ok && retry <= 0 {
			t.Errorf("refused without a retry time")
		}
	}
	check(l, "a", 0, true) // a check counts nothing
	check(l, "a", 0, true)
	check(l, "a", 1, true)
	check(other, "a", 1, true)
	check(l, "a", 0, true)
	check(l, "a", 1, true)
	check(l, "a", 0, false) // three taken: a check now fails
	check(other, "a", 1, false)
	check(l, "b", 1, true) // keys are separate
	if err := other.Reset(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	check(l, "a", 1, true) // cleared for every replica
}

// Package ratelimit counts attempts in Redis (GCRA, go-redis/redis_rate), so
// that a limit holds across every gateway replica.
package ratelimit

import (
	"context"
	"fmt"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Limiter allows up to a rate of attempts per key.
type Limiter struct {
	l      *redis_rate.Limiter
	limit  redis_rate.Limit
	prefix string
}

// PerMinute returns a limiter allowing perMinute attempts a minute per key
// (bursts up to the same number), keeping its counters under prefix.
func PerMinute(rdb *redis.Client, prefix string, perMinute int) *Limiter {
	return &Limiter{l: redis_rate.NewLimiter(rdb), limit: redis_rate.PerMinute(perMinute), prefix: prefix + ":ratelimit:"}
}

// Allow counts n attempts under key and reports whether they are allowed;
// if not, how long until they would be. n = 0 only checks whether one more
// attempt would be allowed now, counting nothing.
func (l *Limiter) Allow(ctx context.Context, key string, n int) (bool, time.Duration, error) {
	if n == 0 {
		res, err := l.l.AllowAtMost(ctx, l.prefix+key, l.limit, 0)
		if err != nil {
			return false, 0, fmt.Errorf("rate limit %s: %w", key, err)
		}
		return res.Remaining > 0, res.RetryAfter, nil
	}
	res, err := l.l.AllowN(ctx, l.prefix+key, l.limit, n)
	if err != nil {
		return false, 0, fmt.Errorf("rate limit %s: %w", key, err)
	}
	return res.Allowed > 0, res.RetryAfter, nil
}

// Reset clears the attempts counted under key.
func (l *Limiter) Reset(ctx context.Context, key string) error {
	if err := l.l.Reset(ctx, l.prefix+key); err != nil {
		return fmt.Errorf("rate limit reset %s: %w", key, err)
	}
	return nil
}

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

// Allow counts one attempt under key and reports whether it is allowed; if
// not, how long until the next one is.
func (l *Limiter) Allow(ctx context.Context, key string) (bool, time.Duration, error) {
	res, err := l.l.Allow(ctx, l.prefix+key, l.limit)
	if err != nil {
		return false, 0, fmt.Errorf("rate limit %s: %w", key, err)
	}
	return res.Allowed > 0, res.RetryAfter, nil
}

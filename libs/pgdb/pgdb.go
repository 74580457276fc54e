// Package pgdb opens a service's PostgreSQL pool (pgx, traced with
// OpenTelemetry) and applies the service's versioned SQL migrations with
// goose. Each service keeps its own migration table, so services that share a
// database never touch each other's versions.
package pgdb

import (
	"context"
	"database/sql"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"go.opentelemetry.io/otel/trace"
)

// Open returns a pool for url, traced with tp, after a ping. maxConns of 0
// keeps pgx's default.
func Open(ctx context.Context, url string, maxConns int32, tp trace.TracerProvider) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	cfg.ConnConfig.Tracer = otelpgx.NewTracer(otelpgx.WithTracerProvider(tp))
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping postgres: %w", err)
	}
	return pool, nil
}

// Migrate applies every pending migration in fsys (files NNNNN_name.sql in
// goose format) and records them in table. Replicas starting together take
// a PostgreSQL advisory lock, so each migration runs once.
func Migrate(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS, table string, logger *slog.Logger) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	return migrate(ctx, db, fsys, table, logger)
}

func migrate(ctx context.Context, db *sql.DB, fsys fs.FS, table string, logger *slog.Logger) error {
	h := fnv.New64a()
	_, _ = h.Write([]byte(table))
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(int64(h.Sum64() >> 1)))
	if err != nil {
		return fmt.Errorf("migrate %s: %w", table, err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys,
		goose.WithTableName(table), goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("migrate %s: %w", table, err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", table, err)
	}
	for _, r := range results {
		logger.InfoContext(ctx, "migration applied", "table", table, "version", r.Source.Version, "duration", r.Duration)
	}
	return nil
}

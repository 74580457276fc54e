package scenario

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/communications/communications/libs/protocol"
)

// HistoryConfig configures the history scenario. Zero fields take the
// defaults given. Target needs the gateways and PostgreSQL (to seed the
// chat).
type HistoryConfig struct {
	Target
	// Messages is the length of the chat read (1000000). The chat, named
	// lg-history-<Messages>, is created and seeded once and kept.
	Messages int
	// Members is the number of users in the chat, whose tokens the
	// requests use in turn (100, at most 100).
	Members int
	// Limit is the page size (50).
	Limit int
	// Rate and Duration: requests a second, open loop (1000), for how long
	// (20s).
	Rate     float64
	Duration time.Duration
	// Warmup is how long the same requests run at Rate before the
	// measured Duration, not recorded (2s; negative: none).
	Warmup time.Duration
	Setup  int // logins at once (32)
	// UserPrefix starts every username ("lg_u"); Password is theirs.
	UserPrefix, Password string
	Log                  io.Writer
	// TokenFile keeps the users' tokens between runs ("": none).
	TokenFile string
}

func (c *HistoryConfig) defaults() {
	setDefault(&c.Messages, 1_000_000)
	setDefault(&c.Members, 100)
	c.Members = min(c.Members, 100)
	setDefault(&c.Limit, 50)
	setDefault(&c.Rate, 1000)
	setDefault(&c.Duration, 20*time.Second)
	setDefault(&c.Warmup, 2*time.Second)
	setDefault(&c.Setup, 32)
	setDefault(&c.UserPrefix, "lg_u")
	setDefault(&c.Password, "loadgen-password")
	setDefault(&c.Log, io.Discard)
}

// HistoryReport holds the figures of a history run.
type HistoryReport struct {
	Scenario    string  `json:"scenario"`
	ChatID      int64   `json:"chat_id"`
	Messages    int     `json:"chat_messages"`
	SeededNow   int     `json:"seeded_now"`
	SeedSec     float64 `json:"seed_seconds"`
	Limit       int     `json:"page_size"`
	Rate        float64 `json:"rate_per_second"`
	DurationSec float64 `json:"duration_seconds"`
	// WarmupRequests were sent at Rate for WarmupSec before the measured
	// phase, not recorded; WarmupErrors counts their failures by code.
	WarmupRequests int64            `json:"warmup_requests"`
	WarmupSec      float64          `json:"warmup_seconds"`
	WarmupErrors   map[string]int64 `json:"warmup_errors"`
	Requests       int64            `json:"requests"`
	// SendRate is the rate of requests actually started.
	SendRate float64 `json:"achieved_rate"`
	OK       int64   `json:"ok"`
	// ShortPages counts answers with fewer messages than the page size.
	ShortPages int64            `json:"short_pages"`
	Errors     map[string]int64 `json:"errors"`
	// WarmupConns counts the connections to the gateways the load
	// generator began to dial before the measured phase (the first pages,
	// one after the other, dial one per gateway; the warm-up at rate the
	// rest), MeasuredConns those it dialed during it.
	WarmupConns   int64 `json:"warmup_connections"`
	MeasuredConns int64 `json:"measured_connections"`
	// Latency is from a request's intended start to its whole answer read.
	Latency Latency `json:"latency"`
	// WorstSeconds are the three seconds of intended start whose slowest
	// request was slowest.
	WorstSeconds []WorstSecond `json:"worst_seconds"`
	Processes    []Process     `json:"processes"`
}

// RunHistory reads pages of a long chat through the gateways' HTTP API at a
// constant rate, each before a random sequence number.
func RunHistory(ctx context.Context, cfg HistoryConfig) (*HistoryReport, error) {
	cfg.defaults()
	if cfg.Messages <= cfg.Limit {
		return nil, fmt.Errorf("history: the chat must be longer than a page (%d messages, pages of %d)", cfg.Messages, cfg.Limit)
	}
	if cfg.Postgres == "" {
		return nil, errors.New("history: the PostgreSQL URL is needed to seed the chat (a stack file has it)")
	}
	a := newAPI(cfg.Gateways)
	names, tokens, err := a.setupUsers(ctx, cfg.TokenFile, cfg.UserPrefix, cfg.Password, cfg.Members, cfg.Setup)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	chat, err := a.chatNamed(ctx, tokens[0], fmt.Sprintf("lg-history-%d", cfg.Messages), names[1:])
	if err != nil {
		return nil, fmt.Errorf("history: chat: %w", err)
	}
	rep := &HistoryReport{Scenario: "history", ChatID: chat.ID, Messages: cfg.Messages, Limit: cfg.Limit,
		Rate: cfg.Rate, DurationSec: cfg.Duration.Seconds(), Errors: map[string]int64{}, WarmupErrors: map[string]int64{}}
	t0 := time.Now()
	if rep.SeededNow, err = seedChat(ctx, cfg.Postgres, chat, cfg.Messages, cfg.Log); err != nil {
		return nil, fmt.Errorf("history: seed: %w", err)
	}
	rep.SeedSec = time.Since(t0).Seconds()

	fmt.Fprintf(cfg.Log, "history: chat %d holds %d messages; reading pages of %d at %.0f/s for %s (after a warm-up of %s) ...\n",
		chat.ID, cfg.Messages, cfg.Limit, cfg.Rate, cfg.Duration, max(cfg.Warmup, 0))
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 512
	var dials atomic.Int64
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return dialer.DialContext(ctx, network, addr)
	}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	// Warm up: one request per user and gateway, one after the other,
	// opens connections and resolves each session and read access once, so
	// that the measured requests do not begin with every user's first
	// request at the same instant.
	for i := range cfg.Gateways {
		for _, token := range tokens {
			if _, err := historyPage(ctx, client, cfg.Gateways[i], token, chat.ID, int64(cfg.Messages)+1, cfg.Limit); err != nil {
				return nil, fmt.Errorf("history: first page: %w", err)
			}
		}
	}

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	var (
		mu       sync.Mutex
		shards   [latencyShards]shard
		ok, shrt atomic.Int64
	)
	for i := range shards {
		shards[i].h = hdrhistogram.New(1, 60_000_000, 3)
	}
	// stream requests pages at cfg.Rate for d, counts failures in errs
	// and records latencies when record; it returns how many it sent and
	// in what time.
	stream := func(d time.Duration, errs map[string]int64, record bool) (int64, time.Duration) {
		var wg sync.WaitGroup
		sent, took := openLoop(ctx, cfg.Rate, int64(cfg.Rate*d.Seconds()), func(i int64, intended time.Time) {
			// A full page: before is in [limit+1, messages+1].
			beforeSeq := int64(cfg.Limit) + 1 + rng.Int64N(int64(cfg.Messages-cfg.Limit)+1)
			base, token := cfg.Gateways[int(i)%len(cfg.Gateways)], tokens[int(i)%len(tokens)]
			wg.Add(1)
			go func(i int64) {
				defer wg.Done()
				n, err := historyPage(ctx, client, base, token, chat.ID, beforeSeq, cfg.Limit)
				if err != nil {
					code := "request_failed"
					var ae *apiError
					if errors.As(err, &ae) {
						code = ae.Code
					}
					mu.Lock()
					errs[code]++
					mu.Unlock()
					return
				}
				if !record {
					return
				}
				shards[i%latencyShards].record(max(time.Since(intended).Microseconds(), 1), intended.UnixNano())
				ok.Add(1)
				if n < cfg.Limit {
					shrt.Add(1)
				}
			}(i)
		})
		wg.Wait()
		return sent, took
	}
	// Warm up at rate: the same stream of requests for cfg.Warmup, not
	// recorded, so that the measured phase finds what steady traffic
	// keeps ready (the load generator's connections to the gateways, the
	// services' connection pools, their goroutines' stacks).
	if cfg.Warmup > 0 {
		n, took := stream(cfg.Warmup, rep.WarmupErrors, false)
		rep.WarmupRequests, rep.WarmupSec = n, took.Seconds()
	}
	rep.WarmupConns = dials.Load()
	before := snapshot(cfg.Pids)
	i, took := stream(cfg.Duration, rep.Errors, true)
	rep.SendRate = float64(i) / took.Seconds()
	rep.Processes = processes(cfg.Pids, before, snapshot(cfg.Pids))
	rep.MeasuredConns = dials.Load() - rep.WarmupConns
	rep.Requests, rep.OK, rep.ShortPages = i, ok.Load(), shrt.Load()
	h := hdrhistogram.New(1, 60_000_000, 3)
	for i := range shards {
		h.Merge(shards[i].h)
	}
	rep.Latency = latencyOf(h)
	rep.WorstSeconds = worstSeconds(shards[:], 3)
	return rep, nil
}

var seqField = []byte(`"seq":`)

// historyPage gets one page and returns how many messages it holds.
func historyPage(ctx context.Context, client *http.Client, base, token string, chatID, before int64, limit int) (int, error) {
	u := base + "/api/v1/chats/" + strconv.FormatInt(chatID, 10) + "/messages?limit=" + strconv.Itoa(limit) +
		"&before=" + strconv.FormatInt(before, 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, &apiError{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode)}
	}
	// Each message has one "seq" field ("target_seq" does not match).
	return bytes.Count(b, seqField), nil
}

// seedChat fills chat with stored messages up to n, straight into the
// history service's tables with COPY (as if the writer had stored them),
// and returns how many it added. A chat already that long is left alone.
func seedChat(ctx context.Context, pgURL string, chat protocol.Chat, n int, log io.Writer) (int, error) {
	pool, err := pgxpool.New(ctx, pgURL)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// The counter row's lock keeps the writer out of the chat meanwhile.
	if _, err := tx.Exec(ctx, `INSERT INTO chat_counters (chat_id, last_seq) VALUES ($1, 0) ON CONFLICT DO NOTHING`, chat.ID); err != nil {
		return 0, err
	}
	var last int64
	if err := tx.QueryRow(ctx, `SELECT last_seq FROM chat_counters WHERE chat_id = $1 FOR UPDATE`, chat.ID).Scan(&last); err != nil {
		return 0, err
	}
	if last >= int64(n) {
		return 0, nil
	}
	fmt.Fprintf(log, "history: seeding chat %d with messages %d to %d (once; kept for later runs) ...\n", chat.ID, last+1, n)
	members := chat.Members
	if len(members) == 0 {
		return 0, errors.New("the chat has no members")
	}
	sentAt := time.Now().Add(-time.Duration(n) * time.Millisecond).UTC()
	seq := last
	var text []byte
	rows := pgx.CopyFromFunc(func() ([]any, error) {
		if seq >= int64(n) {
			return nil, nil
		}
		seq++
		m := members[seq%int64(len(members))]
		text = append(text[:0], "history seed message number "...)
		text = strconv.AppendInt(text, seq, 10)
		return []any{chat.ID, seq, m.ID, m.Username, "seed-" + strconv.FormatInt(seq, 10), string(text),
			sentAt.Add(time.Duration(seq) * time.Millisecond)}, nil
	})
	cols := []string{"chat_id", "seq", "sender_id", "sender", "client_msg_id", "text", "sent_at"}
	added, err := tx.CopyFrom(ctx, pgx.Identifier{"messages"}, cols, rows)
	if err != nil {
		return 0, err
	}
	if _, err := tx.Exec(ctx, `UPDATE chat_counters SET last_seq = $2 WHERE chat_id = $1`, chat.ID, n); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	if _, err := pool.Exec(ctx, `ANALYZE messages`); err != nil {
		return 0, err
	}
	return int(added), nil
}

// WriteTable writes the report as a table.
func (rep *HistoryReport) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "scenario history: pages of %d in chat %d of %d messages, %.0f requests/s for %.0f s\n",
		rep.Limit, rep.ChatID, rep.Messages, rep.Rate, rep.DurationSec)
	row := func(k string, v any) { fmt.Fprintf(w, "  %-28s %v\n", k, v) }
	if rep.SeededNow > 0 {
		row("seeded now (s)", fmt.Sprintf("%d (%.1f)", rep.SeededNow, rep.SeedSec))
	}
	row("warm-up requests (s)", fmt.Sprintf("%d (%.1f), not recorded", rep.WarmupRequests, rep.WarmupSec))
	for _, code := range ErrorCodes(rep.WarmupErrors) {
		row("warm-up errors "+code, rep.WarmupErrors[code])
	}
	row("requests", rep.Requests)
	row("achieved rate /s", fmt.Sprintf("%.1f", rep.SendRate))
	row("ok", rep.OK)
	row("short pages", rep.ShortPages)
	row("connections warm-up/measured", fmt.Sprintf("%d / %d", rep.WarmupConns, rep.MeasuredConns))
	for _, code := range ErrorCodes(rep.Errors) {
		row("errors "+code, rep.Errors[code])
	}
	row("latency ms p50/p90/p99", fmt.Sprintf("%.2f / %.2f / %.2f", rep.Latency.P50, rep.Latency.P90, rep.Latency.P99))
	row("latency ms p99.9/max", fmt.Sprintf("%.2f / %.2f", rep.Latency.P999, rep.Latency.Max))
	if len(rep.WorstSeconds) > 0 {
		row("worst seconds (UTC, max ms)", worstText(rep.WorstSeconds))
	}
	writeProcessesPer(w, rep.Processes, rep.OK, "request")
}

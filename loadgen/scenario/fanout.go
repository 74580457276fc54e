package scenario

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gorilla/websocket"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/loadgen/procstat"
	"github.com/communications/communications/loadgen/stamp"
)

// FanoutConfig configures the fanout scenario. Zero fields take the
// defaults given.
type FanoutConfig struct {
	Target
	Chats   int     // chats (100)
	Members int     // members per chat, each with one websocket (50)
	Rate    float64 // sends a second over all chats (1000)
	// Duration is how long sends go on (30s); Drain how long to wait
	// afterwards for outstanding deliveries (30s); the wait ends as soon as
	// every acknowledged send has reached every member.
	Duration, Drain time.Duration
	// Sources is the number of loopback source addresses 127.0.0.1..N (16).
	Sources int
	// Setup is how many registrations, logins, chat creations and dials
	// run at once (32).
	Setup int
	// UserPrefix starts every username ("lg_u"); users are reused if they
	// exist. Password is their password.
	UserPrefix, Password string
	// RunID makes chat names and client message ids unique (the time).
	RunID string
	// Log receives progress lines (nil: none).
	Log io.Writer
	// TokenFile keeps the users' tokens between runs ("": none).
	TokenFile string
	// Slow is the fraction of connections that never read (0): spread
	// evenly, never senders, left out of the delivery figures; at the end
	// they read what they were sent to learn how the gateway closed them.
	Slow float64
}

func (c *FanoutConfig) defaults() {
	setDefault(&c.Chats, 100)
	setDefault(&c.Members, 50)
	setDefault(&c.Rate, 1000)
	setDefault(&c.Duration, 30*time.Second)
	setDefault(&c.Drain, 30*time.Second)
	setDefault(&c.Sources, 16)
	setDefault(&c.Setup, 32)
	setDefault(&c.UserPrefix, "lg_u")
	setDefault(&c.Password, "loadgen-password")
	setDefault(&c.RunID, newRunID())
	setDefault(&c.Log, io.Discard)
}

// FanoutReport holds the figures of a fanout run.
type FanoutReport struct {
	Scenario    string  `json:"scenario"`
	Chats       int     `json:"chats"`
	Members     int     `json:"members"`
	Gateways    int     `json:"gateways"`
	Rate        float64 `json:"rate_per_second"`
	DurationSec float64 `json:"duration_seconds"`
	Connections int     `json:"connections"`
	Sends       int64   `json:"sends"`
	// SendRate is the rate actually achieved (sends over the send window).
	SendRate float64          `json:"achieved_send_rate"`
	Acks     int64            `json:"acks"`
	Errors   map[string]int64 `json:"errors"`
	Expected int64            `json:"deliveries_expected"`
	Received int64            `json:"deliveries_received"`
	// Lost counts (acknowledged send, member) pairs never received.
	Lost int64 `json:"lost"`
	// DrainTimedOut is set when the drain ended at its limit with
	// deliveries outstanding: then "lost" may count late ones.
	DrainTimedOut bool `json:"drain_timed_out"`
	// UnackedDelivered counts deliveries of sends answered with an error
	// (such as unavailable, whose outcome is unknown) or not at all: they
	// were stored after all.
	UnackedDelivered int64 `json:"unacked_delivered"`
	Duplicated       int64 `json:"duplicated"`
	// OtherChats counts messages of chats outside this run that the
	// connections received (a backlog of an earlier run on the same
	// users); they are not counted elsewhere.
	OtherChats int64 `json:"messages_of_other_chats"`
	OutOfOrder int64 `json:"out_of_order"`
	// Latency runs from a send's intended time to each delivery of it,
	// AckLatency to its acknowledgement to the sender (the message
	// accepted: stored in the stream, not yet in PostgreSQL).
	Latency    Latency `json:"latency"`
	AckLatency Latency `json:"ack_latency"`
	// WorstSeconds are the three seconds of intended send time whose
	// slowest delivery was slowest: when the tail happened, to match
	// against the services' logs.
	WorstSeconds []WorstSecond `json:"worst_seconds"`
	Processes    []Process     `json:"processes"`
	// CPU per delivered message, in microseconds: of the gateways, of all
	// server processes, and of the load generator.
	GatewayCPUPerDeliveryUs float64 `json:"gateway_cpu_us_per_delivery"`
	ServerCPUPerDeliveryUs  float64 `json:"server_cpu_us_per_delivery"`
	LoadgenCPUPerDeliveryUs float64 `json:"loadgen_cpu_us_per_delivery"`
	// SlowConnections never read; SlowClosed counts how the gateway
	// closed them (by close code, "open" if it had not).
	SlowConnections int              `json:"slow_connections,omitempty"`
	SlowClosed      map[string]int64 `json:"slow_closed,omitempty"`
	// GatewayRSSKiB holds each gateway's resident memory sampled every
	// second while sending and draining.
	GatewayRSSKiB map[string][]int64 `json:"gateway_rss_kib_samples"`
}

// WorstSecond is one second of intended send time and its slowest
// delivery.
type WorstSecond struct {
	At    time.Time `json:"at"`
	MaxMs float64   `json:"max_ms"`
}

// worstSeconds returns the n seconds of shards' records with the highest
// latency, the highest first.
func worstSeconds(shards []shard, n int) []WorstSecond {
	all := map[int64]int64{}
	for i := range shards {
		for sec, us := range shards[i].worst {
			all[sec] = max(all[sec], us)
		}
	}
	secs := slices.SortedFunc(maps.Keys(all), func(a, b int64) int { return cmp.Or(cmp.Compare(all[b], all[a]), cmp.Compare(a, b)) })
	out := make([]WorstSecond, 0, n)
	for _, sec := range secs[:min(n, len(secs))] {
		out = append(out, WorstSecond{At: time.Unix(sec, 0).UTC(), MaxMs: float64(all[sec]) / 1e3})
	}
	return out
}

// worstText lists worst seconds as "15:04:05 MS, ...".
func worstText(ws []WorstSecond) string {
	var b strings.Builder
	for i, w := range ws {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %.0f", w.At.Format("15:04:05"), w.MaxMs)
	}
	return b.String()
}

// isSlow reports whether connection k is one of the fraction slow that
// never read: spread evenly over the connections.
func isSlow(k int, slow float64) bool {
	return slow > 0 && int(float64(k+1)*slow) > int(float64(k)*slow)
}

// latencyShards is the number of histograms receivers record into (each
// under its own lock), merged at the end.
const latencyShards = 32

type shard struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
	// worst holds the highest latency (µs) of the sends intended in each
	// second (unix seconds), to find when a stall happened.
	worst map[int64]int64
	// acks records the latency of the senders' acknowledgements (the
	// fanout scenario's shards only).
	acks *hdrhistogram.Histogram
}

// recordAck records an acknowledgement's latency of us microseconds.
func (sh *shard) recordAck(us int64) {
	sh.mu.Lock()
	_ = sh.acks.RecordValue(us)
	sh.mu.Unlock()
}

// fanoutRun is the state of one run shared by its goroutines.
type fanoutRun struct {
	cfg     FanoutConfig
	members map[int64]int64 // chat id -> members (read-only once sending)
	// idPrefix starts the client message id of every send of this run,
	// followed by the send's number.
	idPrefix []byte
	// acked[i] is set when send i is acknowledged.
	acked []atomic.Bool
	// intended[i] is send i's intended time (unix nanoseconds), set before
	// it is written.
	intended []atomic.Int64
	shards   [latencyShards]shard
	acks     atomic.Int64
	expected atomic.Int64
	received atomic.Int64
	errMu    sync.Mutex
	errors   map[string]int64
}

func (r *fanoutRun) countError(code string) {
	r.errMu.Lock()
	r.errors[code]++
	r.errMu.Unlock()
}

// conn is one member's websocket.
type conn struct {
	ws     *websocket.Conn
	chatID int64
	chat   int // its index
	tally  seqTally
	// got holds the numbers within the chat (send number / chats) of the
	// sends received.
	got bitset
	// unexpected counts messages of other chats.
	unexpected int64
	// slow connections never read.
	slow bool
}

// inbound is the part of a server event the load generator reads. Raw
// fields reuse their buffers between events.
type inbound struct {
	Type        json.RawMessage `json:"type"`
	ChatID      int64           `json:"chat_id"`
	Seq         int64           `json:"seq"`
	Text        json.RawMessage `json:"text"`
	Code        json.RawMessage `json:"code"`
	ClientMsgID json.RawMessage `json:"client_msg_id"`
}

// sendIndex returns the send number in a client message id (a JSON string
// of prefix and the number), or -1 when it is not one of this run's.
func sendIndex(raw, prefix []byte) int64 {
	if len(raw) < len(prefix)+3 || raw[0] != '"' || raw[len(raw)-1] != '"' || !bytes.HasPrefix(raw[1:], prefix) {
		return -1
	}
	var n int64
	for _, c := range raw[1+len(prefix) : len(raw)-1] {
		if c < '0' || c > '9' || n > (1<<62)/10 {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

var (
	typeMessage = []byte(`"` + protocol.TypeMessage + `"`)
	typeAck     = []byte(`"` + protocol.TypeAck + `"`)
	typeError   = []byte(`"` + protocol.TypeError + `"`)
)

// read is the connection's reader goroutine: it runs until the connection
// closes.
func (r *fanoutRun) read(c *conn, sh *shard) {
	var (
		buf bytes.Buffer
		ev  inbound
	)
	_ = readFrames(c.ws, &buf, func(frame []byte, now int64) {
		bad := events(frame, &ev, func(ev *inbound) {
			switch {
			case bytes.Equal(ev.Type, typeMessage):
				if ev.ChatID != c.chatID {
					c.unexpected++
					return
				}
				c.tally.observe(ev.Seq)
				r.received.Add(1)
				if i := sendIndex(ev.ClientMsgID, r.idPrefix); i >= 0 {
					c.got.add(i / int64(r.cfg.Chats))
				}
				sh.recordStamp(ev.Text, now)
			case bytes.Equal(ev.Type, typeAck):
				r.acks.Add(1)
				r.expected.Add(r.members[ev.ChatID])
				if i := sendIndex(ev.ClientMsgID, r.idPrefix); i >= 0 && i < int64(len(r.acked)) {
					r.acked[i].Store(true)
					if at := r.intended[i].Load(); at > 0 {
						sh.recordAck(max((now-at)/1e3, 1))
					}
				}
			case bytes.Equal(ev.Type, typeError):
				r.countError(strings.Trim(string(ev.Code), `"`))
			}
		})
		for range bad {
			r.countError("undecodable_event")
		}
	})
}

// RunFanout runs the fanout scenario: Chats chats of Members members, one
// websocket per member over the gateways round-robin, and sends at a
// constant total rate, each stamped with its intended send time.
func RunFanout(ctx context.Context, cfg FanoutConfig) (*FanoutReport, error) {
	cfg.defaults()
	if len(cfg.Gateways) == 0 {
		return nil, fmt.Errorf("fanout: no gateways")
	}
	if cfg.Members < 2 || cfg.Members > 100 {
		return nil, fmt.Errorf("fanout: members must be 2 to 100 (the chat API's limit per request), not %d", cfg.Members)
	}
	n := cfg.Chats * cfg.Members
	if err := ensureFiles(n); err != nil {
		return nil, err
	}
	r := &fanoutRun{cfg: cfg, members: map[int64]int64{}, errors: map[string]int64{},
		idPrefix: []byte("lg-" + cfg.RunID + "-"), acked: make([]atomic.Bool, int64(cfg.Duration.Seconds()*cfg.Rate))}
	r.intended = make([]atomic.Int64, len(r.acked))
	for i := range r.shards {
		r.shards[i].h = hdrhistogram.New(1, 60_000_000, 3) // 1 us to 60 s
		r.shards[i].acks = hdrhistogram.New(1, 60_000_000, 3)
	}
	a := newAPI(cfg.Gateways)

	start := time.Now()
	fmt.Fprintf(cfg.Log, "fanout: setting up %d users ...\n", n)
	usernames := make([]string, n)
	tokens := make([]string, n)
	cache, err := loadTokens(cfg.TokenFile)
	if err != nil {
		return nil, err
	}
	var ready atomic.Int64
	err = parallel(ctx, n, cfg.Setup, func(ctx context.Context, i int) error {
		usernames[i] = fmt.Sprintf("%s%06d", cfg.UserPrefix, i)
		t, err := a.cachedUser(ctx, cache, i, usernames[i], cfg.Password)
		tokens[i] = t
		if done := ready.Add(1); err == nil && done%1000 == 0 {
			fmt.Fprintf(cfg.Log, "fanout: %d users logged in (%s)\n", done, time.Since(start).Round(time.Second))
		}
		return err
	})
	if err := errors.Join(err, cache.save()); err != nil {
		return nil, fmt.Errorf("fanout: users: %w", err)
	}
	fmt.Fprintf(cfg.Log, "fanout: users ready in %s; creating %d chats ...\n", time.Since(start).Round(time.Millisecond), cfg.Chats)
	chatIDs := make([]int64, cfg.Chats)
	// Deferred before the connections' close, so it runs after it (the
	// removed members get no events), and before the chats are made, so a
	// set-up that fails half way retires those it made.
	retire := make([]runChat, cfg.Chats)
	defer func() { a.retireChats(ctx, cfg.Log, cfg.Setup, retire) }()
	err = parallel(ctx, cfg.Chats, cfg.Setup, func(ctx context.Context, c int) error {
		first := c * cfg.Members
		id, err := a.createChat(ctx, c, tokens[first], fmt.Sprintf("lg-%s-%d", cfg.RunID, c), usernames[first+1:first+cfg.Members])
		chatIDs[c] = id
		retire[c] = runChat{id: id, token: tokens[first], members: usernames[first+1 : first+cfg.Members]}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fanout: chats: %w", err)
	}
	slowConns := 0
	for c, id := range chatIDs {
		fast := 0
		for m := range cfg.Members {
			if isSlow(c*cfg.Members+m, cfg.Slow) {
				slowConns++
			} else {
				fast++
			}
		}
		if fast == 0 {
			return nil, fmt.Errorf("fanout: every member of chat %d would be slow", c)
		}
		r.members[id] = int64(fast)
	}

	fmt.Fprintf(cfg.Log, "fanout: opening %d websockets ...\n", n)
	d := newDialers(cfg.Sources)
	conns := make([]*conn, n)
	var readers sync.WaitGroup
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.ws.Close()
			}
		}
		readers.Wait()
	}()
	err = parallel(ctx, n, cfg.Setup, func(ctx context.Context, i int) error {
		ws, err := d.dial(ctx, i, cfg.Gateways[i%len(cfg.Gateways)], tokens[i])
		if err != nil {
			return err
		}
		c := &conn{ws: ws, chatID: chatIDs[i/cfg.Members], chat: i / cfg.Members, slow: isSlow(i, cfg.Slow)}
		conns[i] = c
		if c.slow {
			return nil
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			r.read(c, &r.shards[i%latencyShards])
		}()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fanout: connections: %w%s", err, staleHint(cfg.TokenFile))
	}
	fmt.Fprintf(cfg.Log, "fanout: %d connections ready in %s; sending %.0f/s for %s ...\n",
		n, time.Since(start).Round(time.Millisecond), cfg.Rate, cfg.Duration)

	before := snapshot(cfg.Pids)
	sampling := make(chan struct{})
	samplesDone := make(chan map[string][]int64, 1)
	go func() { samplesDone <- sampleGatewayRSS(cfg.Pids, sampling) }()
	sends, sendWindow, err := r.send(ctx, conns, chatIDs)
	if err != nil {
		return nil, err
	}
	// Drain: wait for every acknowledged send's deliveries.
	deadline := time.Now().Add(cfg.Drain)
	drained := false
	for time.Now().Before(deadline) && ctx.Err() == nil {
		r.errMu.Lock()
		var errs int64
		for _, v := range r.errors {
			errs += v
		}
		r.errMu.Unlock()
		if r.acks.Load()+errs >= sends && r.received.Load() >= r.expected.Load() {
			drained = true
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	after := snapshot(cfg.Pids)
	close(sampling)
	slowClosed := readSlow(conns)
	for _, c := range conns {
		c.ws.Close()
	}
	readers.Wait()

	rep := &FanoutReport{
		Scenario: "fanout", Chats: cfg.Chats, Members: cfg.Members, Gateways: len(cfg.Gateways),
		Rate: cfg.Rate, DurationSec: cfg.Duration.Seconds(), Connections: n, Sends: sends,
		SendRate: float64(sends) / sendWindow.Seconds(), Acks: r.acks.Load(), Errors: r.errors,
		Expected: r.expected.Load(), Received: r.received.Load(),
		SlowConnections: slowConns, GatewayRSSKiB: <-samplesDone, DrainTimedOut: !drained,
	}
	if slowConns > 0 {
		rep.SlowClosed = slowClosed
	}
	var (
		got    []bitset
		chatOf []int
	)
	for _, c := range conns {
		if c.slow {
			continue
		}
		rep.Duplicated += c.tally.duplicated
		rep.OutOfOrder += c.tally.outOfOrder
		rep.OtherChats += c.unexpected
		got, chatOf = append(got, c.got), append(chatOf, c.chat)
	}
	acked := make([]bool, sends)
	for i := range acked {
		acked[i] = r.acked[i].Load()
	}
	rep.Lost, rep.UnackedDelivered = deliveries(got, chatOf, acked, cfg.Chats)
	h, ah := hdrhistogram.New(1, 60_000_000, 3), hdrhistogram.New(1, 60_000_000, 3)
	for i := range r.shards {
		h.Merge(r.shards[i].h)
		ah.Merge(r.shards[i].acks)
	}
	rep.Latency, rep.AckLatency = latencyOf(h), latencyOf(ah)
	rep.WorstSeconds = worstSeconds(r.shards[:], 3)
	rep.Processes = processes(cfg.Pids, before, after)
	if rep.Received > 0 {
		per := func(cpu float64) float64 { return cpu * 1e6 / float64(rep.Received) }
		var gw, servers float64
		for _, p := range rep.Processes {
			switch {
			case p.Name == loadgenName:
				rep.LoadgenCPUPerDeliveryUs = per(p.CPUSeconds)
			case strings.HasPrefix(p.Name, "gateway"):
				gw += p.CPUSeconds
				servers += p.CPUSeconds
			default:
				servers += p.CPUSeconds
			}
		}
		rep.GatewayCPUPerDeliveryUs, rep.ServerCPUPerDeliveryUs = per(gw), per(servers)
	}
	return rep, nil
}

// send is the open-loop sender: send i is intended at start + i/rate, goes
// to chat i mod chats, from its members in turn, and carries its intended
// time. A late send goes out at once with its intended time, so a stall
// shows up as latency rather than as a lower rate.
func (r *fanoutRun) send(ctx context.Context, conns []*conn, chatIDs []int64) (int64, time.Duration, error) {
	cfg := r.cfg
	frame := make([]byte, 0, 256)
	var text []byte
	n, took := openLoop(ctx, cfg.Rate, int64(len(r.acked)), func(i int64, intended time.Time) {
		chat := int(i % int64(cfg.Chats))
		member := int(i/int64(cfg.Chats)) % cfg.Members
		for conns[chat*cfg.Members+member].slow {
			member = (member + 1) % cfg.Members
		}
		c := conns[chat*cfg.Members+member]
		text = stamp.Append(text[:0], intended.UnixNano())
		r.intended[i].Store(intended.UnixNano())
		frame = append(frame[:0], `{"type":"send","chat_id":`...)
		frame = strconv.AppendInt(frame, chatIDs[chat], 10)
		frame = append(frame, `,"client_msg_id":"`...)
		frame = append(frame, r.idPrefix...)
		frame = strconv.AppendInt(frame, i, 10)
		frame = append(frame, `","text":"`...)
		frame = append(frame, text...)
		frame = append(frame, `"}`...)
		_ = c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := c.ws.WriteMessage(websocket.TextMessage, frame); err != nil {
			r.countError("write_failed")
		}
	})
	return n, took, nil
}

// sampleGatewayRSS samples the resident memory of the gateways in pids
// every second until stop is closed.
func sampleGatewayRSS(pids map[string]int, stop <-chan struct{}) map[string][]int64 {
	out := map[string][]int64{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for name, pid := range pids {
			if strings.HasPrefix(name, "gateway") {
				if v, err := procstat.Read("/proc", pid); err == nil {
					out[name] = append(out[name], v.RSSKiB)
				}
			}
		}
		select {
		case <-stop:
			return out
		case <-tick.C:
		}
	}
}

// readSlow reads, at the end, what the slow connections were sent, to
// learn how the gateway closed them: by close code, or "open" when it had
// not closed them within a few seconds.
func readSlow(conns []*conn) map[string]int64 {
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		out = map[string]int64{}
	)
	for _, c := range conns {
		if !c.slow {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
			var err error
			for err == nil {
				var rd io.Reader
				if _, rd, err = c.ws.NextReader(); err == nil {
					_, err = io.Copy(io.Discard, rd)
				}
			}
			how := "open"
			var ce *websocket.CloseError
			switch {
			case errors.As(err, &ce):
				how = strconv.Itoa(ce.Code)
			case !errors.Is(err, os.ErrDeadlineExceeded):
				how = "reset"
			}
			mu.Lock()
			out[how]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// ErrorCodes lists a report's error codes, sorted.
func ErrorCodes(errs map[string]int64) []string { return slices.Sorted(maps.Keys(errs)) }

// WriteTable writes the report as a table.
func (rep *FanoutReport) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "scenario fanout: %d chats x %d members over %d gateways, %.0f sends/s for %.0f s\n",
		rep.Chats, rep.Members, rep.Gateways, rep.Rate, rep.DurationSec)
	row := func(k string, v any) { fmt.Fprintf(w, "  %-28s %v\n", k, v) }
	row("connections", rep.Connections)
	row("sends", rep.Sends)
	row("achieved send rate /s", fmt.Sprintf("%.1f", rep.SendRate))
	row("acks", rep.Acks)
	for _, code := range ErrorCodes(rep.Errors) {
		row("errors "+code, rep.Errors[code])
	}
	row("deliveries expected", rep.Expected)
	row("deliveries received", rep.Received)
	if rep.DrainTimedOut {
		row("lost", fmt.Sprintf("%d (the drain timed out: late ones count as lost)", rep.Lost))
	} else {
		row("lost", rep.Lost)
	}
	row("delivered without ack", rep.UnackedDelivered)
	row("duplicated", rep.Duplicated)
	row("out of order", rep.OutOfOrder)
	if rep.OtherChats > 0 {
		row("messages of other chats", rep.OtherChats)
	}
	row("latency ms p50/p90/p99", fmt.Sprintf("%.2f / %.2f / %.2f", rep.Latency.P50, rep.Latency.P90, rep.Latency.P99))
	row("latency ms p99.9/max", fmt.Sprintf("%.2f / %.2f", rep.Latency.P999, rep.Latency.Max))
	row("ack latency ms p50/p90/p99", fmt.Sprintf("%.2f / %.2f / %.2f", rep.AckLatency.P50, rep.AckLatency.P90, rep.AckLatency.P99))
	row("ack latency ms p99.9/max", fmt.Sprintf("%.2f / %.2f", rep.AckLatency.P999, rep.AckLatency.Max))
	if len(rep.WorstSeconds) > 0 {
		row("worst seconds (UTC, max ms)", worstText(rep.WorstSeconds))
	}
	if rep.SlowConnections > 0 {
		row("slow connections", rep.SlowConnections)
		for _, how := range ErrorCodes(rep.SlowClosed) {
			row("slow ones closed "+how, rep.SlowClosed[how])
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rep.GatewayRSSKiB)) {
		s := rep.GatewayRSSKiB[name]
		if len(s) > 0 {
			row(name+" RSS MiB first/max/last", fmt.Sprintf("%.1f / %.1f / %.1f (%d samples)",
				float64(s[0])/1024, float64(slices.Max(s))/1024, float64(s[len(s)-1])/1024, len(s)))
		}
	}
	row("gateway CPU us/delivery", fmt.Sprintf("%.2f", rep.GatewayCPUPerDeliveryUs))
	row("server CPU us/delivery", fmt.Sprintf("%.2f", rep.ServerCPUPerDeliveryUs))
	row("loadgen CPU us/delivery", fmt.Sprintf("%.2f", rep.LoadgenCPUPerDeliveryUs))
	writeProcesses(w, rep.Processes, rep.Received)
}

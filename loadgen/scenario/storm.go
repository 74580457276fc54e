package scenario

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gorilla/websocket"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/loadgen/stamp"
)

// StormConfig configures the reconnect storm. Zero fields take the
// defaults given.
type StormConfig struct {
	Target
	// Clients is the number of websockets on the gateway that is killed
	// (10000); they belong to the Chats x Members users (100 x 50), each
	// user with Clients/(Chats x Members) of them.
	Clients, Chats, Members int
	// Gateway is the index of the gateway killed (0); Resume the index of
	// the one the clients resume on (1).
	Gateway, Resume int
	// GatewayName is the killed gateway's process name in Pids
	// ("gateway-<Gateway+1>").
	GatewayName string
	// Kill kills the gateway (nil: SIGKILL to its pid in Pids).
	Kill func() error
	// Rate is the sends a second over all chats (100), from one more
	// connection per chat on the resume gateway, open loop, from Before
	// ahead of the kill (3s) until After past the last resume (2s).
	Rate          float64
	Before, After time.Duration
	// BackoffMin and BackoffMax shape the clients' reconnect delays as the
	// web app's (web/src/socket.ts) do: attempt n (from 0, reset by a
	// hello) waits a random time between half and all of
	// min(BackoffMax, BackoffMin x 2^n), so the first reconnect after the
	// kill comes 250 to 500 ms later (500ms, 15s); after a failed
	// handshake a client asks GET /api/v1/me whether its session still
	// holds, as the web app does, before it waits.
	BackoffMin, BackoffMax time.Duration
	// Timeout bounds the storm: clients not resumed by then count as
	// failed (60s). Drain is the wait for outstanding deliveries after the
	// sends (30s).
	Timeout, Drain time.Duration
	Sources        int // loopback source addresses (16)
	Setup          int // logins, chat creations and dials at once (32)
	// UserPrefix starts every username ("lg_u"); Password is theirs.
	UserPrefix, Password string
	RunID                string
	Log                  io.Writer
	// TokenFile keeps the users' tokens between runs ("": none).
	TokenFile string
}

func (c *StormConfig) defaults() {
	setDefault(&c.Clients, 10000)
	setDefault(&c.Chats, 100)
	setDefault(&c.Members, 50)
	if c.Resume == 0 && c.Gateway == 0 {
		c.Resume = 1
	}
	setDefault(&c.GatewayName, fmt.Sprintf("gateway-%d", c.Gateway+1))
	setDefault(&c.Rate, 100)
	setDefault(&c.Before, 3*time.Second)
	setDefault(&c.After, 2*time.Second)
	setDefault(&c.BackoffMin, 500*time.Millisecond)
	setDefault(&c.BackoffMax, 15*time.Second)
	setDefault(&c.Timeout, 60*time.Second)
	setDefault(&c.Drain, 30*time.Second)
	setDefault(&c.Sources, 16)
	setDefault(&c.Setup, 32)
	setDefault(&c.UserPrefix, "lg_u")
	setDefault(&c.Password, "loadgen-password")
	setDefault(&c.RunID, newRunID())
	setDefault(&c.Log, io.Discard)
}

// StormReport holds the figures of a reconnect storm.
type StormReport struct {
	Scenario string `json:"scenario"`
	Clients  int    `json:"clients"`
	Chats    int    `json:"chats"`
	Killed   string `json:"killed"`
	// Resumed counts the clients that got their resumed event on the other
	// gateway; ResumeMs is the distribution of the time from the kill to
	// it, and AllResumedSec the time until the last one.
	Resumed       int64   `json:"resumed"`
	NotResumed    int64   `json:"not_resumed"`
	AllResumedSec float64 `json:"all_resumed_seconds"`
	ResumeMs      Latency `json:"kill_to_resumed"`
	// ReconnectAttempts counts dials after the kill, failed ones included.
	ReconnectAttempts int64 `json:"reconnect_attempts"`
	// ReconnectErrors counts the failed attempts by cause (an HTTP status
	// of the handshake, or a failed dial).
	ReconnectErrors  map[string]int64 `json:"reconnect_errors"`
	Rate             float64          `json:"rate_per_second"`
	Sends            int64            `json:"sends"`
	Acks             int64            `json:"acks"`
	Errors           map[string]int64 `json:"errors"`
	Expected         int64            `json:"deliveries_expected"`
	Received         int64            `json:"deliveries_received"`
	Lost             int64            `json:"lost"`
	DrainTimedOut    bool             `json:"drain_timed_out"`
	UnackedDelivered int64            `json:"unacked_delivered"`
	Duplicated       int64            `json:"duplicated"`
	OutOfOrder       int64            `json:"out_of_order"`
	// Latency is from intended send to receipt, over the whole run.
	Latency   Latency   `json:"latency"`
	Processes []Process `json:"processes"`
}

// stormClient is one client of the killed gateway.
type stormClient struct {
	i      int // its number, for the dialer
	user   int // its user, for the token
	chat   int
	chatID int64
	ws     atomic.Pointer[websocket.Conn]
	// Owned by the client's goroutine.
	last       int64
	tally      seqTally
	got        bitset
	unexpected int64
	// resumedAfter is the time from the kill to the resumed event
	// (nanoseconds), 0 until then.
	resumedAfter atomic.Int64
}

type stormRun struct {
	cfg       StormConfig
	d         dialers
	resumeAPI *api // the resume gateway's HTTP API
	tokens    []string
	idPrefix  []byte
	perChat   int64 // storm clients per chat
	killAt    atomic.Int64
	stopping  atomic.Bool
	resumed   atomic.Int64
	attempts  atomic.Int64
	acked     []atomic.Bool
	acks      atomic.Int64
	expected  atomic.Int64
	received  atomic.Int64
	shards    [latencyShards]shard
	errMu     sync.Mutex
	errors    map[string]int64
	redialErr map[string]int64 // under errMu
	allResume chan struct{}
}

func (r *stormRun) countError(code string) {
	r.errMu.Lock()
	r.errors[code]++
	r.errMu.Unlock()
}

func (r *stormRun) errorCount() int64 {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	var n int64
	for _, v := range r.errors {
		n += v
	}
	return n
}

var typeResumed = []byte(`"` + protocol.TypeResumed + `"`)

// handle processes one event for a storm client.
func (r *stormRun) handle(c *stormClient, ev *inbound, now int64) {
	switch {
	case bytes.Equal(ev.Type, typeMessage):
		if ev.ChatID != c.chatID {
			c.unexpected++
			return
		}
		if c.tally.observe(ev.Seq); ev.Seq > c.last {
			c.last = ev.Seq
		}
		i := sendIndex(ev.ClientMsgID, r.idPrefix)
		if i < 0 {
			return
		}
		if !c.got.add(i / int64(r.cfg.Chats)) {
			r.received.Add(1)
		}
		r.shards[c.i%latencyShards].recordStamp(ev.Text, now)
	case bytes.Equal(ev.Type, typeResumed):
		if k := r.killAt.Load(); k != 0 && c.resumedAfter.CompareAndSwap(0, max(now-k, 1)) {
			if r.resumed.Add(1) == int64(r.cfg.Clients) {
				close(r.allResume)
			}
		}
	case bytes.Equal(ev.Type, typeError):
		r.countError(strings.Trim(string(ev.Code), `"`))
	}
}

// client reads a storm client's connection; when it breaks after the kill,
// the client reconnects to the resume gateway with the last sequence it
// has, and reads on.
func (r *stormRun) client(ctx context.Context, c *stormClient, rest []byte) {
	var (
		buf bytes.Buffer
		ev  inbound
	)
	handleFrame := func(frame []byte, now int64) {
		for range events(frame, &ev, func(ev *inbound) { r.handle(c, ev, now) }) {
			r.countError("undecodable_event")
		}
	}
	for {
		ws := c.ws.Load()
		handleFrame(rest, time.Now().UnixNano())
		_ = readFrames(ws, &buf, handleFrame)
		ws.Close()
		if r.stopping.Load() || ctx.Err() != nil {
			return
		}
		if r.killAt.Load() == 0 || c.resumedAfter.Load() != 0 {
			r.countError("connection_lost")
			return
		}
		if rest = r.reconnect(ctx, c); rest == nil {
			return
		}
	}
}

// reconnect dials the resume gateway after the web app's backoff, retrying
// until the storm's timeout; it returns what followed hello in the first
// frame (non-nil), or nil when it gave up.
func (r *stormRun) reconnect(ctx context.Context, c *stormClient) []byte {
	cfg := r.cfg
	deadline := time.Unix(0, r.killAt.Load()).Add(cfg.Timeout)
	for attempt := 0; ; attempt = min(attempt+1, 10) {
		// Equal jitter, as the web app's schedule().
		ceiling := min(cfg.BackoffMax, cfg.BackoffMin<<attempt)
		wait := ceiling/2 + time.Duration(rand.Int64N(int64(ceiling/2)+1))
		if !sleepCtx(ctx, wait) || time.Now().After(deadline) || r.stopping.Load() {
			return nil
		}
		r.attempts.Add(1)
		q := "resume=" + strconv.FormatInt(c.chatID, 10) + ":" + strconv.FormatInt(c.last, 10)
		ws, rest, err := r.d.dialQuery(ctx, c.i, cfg.Gateways[cfg.Resume], q, r.tokens[c.user])
		if err == nil {
			c.ws.Store(ws)
			return append([]byte{}, rest...)
		}
		cause := redialCause(err)
		r.errMu.Lock()
		r.redialErr[cause]++
		r.errMu.Unlock()
		// The handshake failed: a browser sees no status, so the web app
		// asks the API whether the session still holds before waiting.
		if err := r.resumeAPI.do(ctx, 0, http.MethodGet, "/api/v1/me", r.tokens[c.user], nil, nil); err != nil {
			r.errMu.Lock()
			r.redialErr["session_check_failed"]++
			r.errMu.Unlock()
		}
	}
}

// redialCause names the cause of a failed reconnect for the report.
func redialCause(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, "(HTTP "); i >= 0 && strings.HasSuffix(msg, ")") {
		return "http_" + msg[i+6:len(msg)-1]
	}
	for _, c := range []struct{ substr, cause string }{
		{"read hello", "no_hello"},
		{"connection refused", "refused"},
		{"connection reset", "reset"},
		{"cannot assign requested address", "no_local_port"},
		{"timeout", "timeout"},
		{"EOF", "eof"},
	} {
		if strings.Contains(msg, c.substr) {
			return c.cause
		}
	}
	return "dial_failed"
}

// RunStorm opens Clients websockets on one gateway, sends into their chats
// from connections on another, kills the first gateway and measures how
// long its clients take to resume on the other, and what they lost.
func RunStorm(ctx context.Context, cfg StormConfig) (*StormReport, error) {
	cfg.defaults()
	if cfg.Gateway < 0 || cfg.Gateway >= len(cfg.Gateways) || cfg.Resume < 0 || cfg.Resume >= len(cfg.Gateways) || cfg.Resume == cfg.Gateway {
		return nil, fmt.Errorf("storm: needs two gateways (kill %d, resume on %d of %d)", cfg.Gateway, cfg.Resume, len(cfg.Gateways))
	}
	users := cfg.Chats * cfg.Members
	if cfg.Members < 2 || cfg.Members > 100 || cfg.Clients%users != 0 {
		return nil, fmt.Errorf("storm: members must be 2 to 100 and clients a multiple of chats x members (%d)", users)
	}
	if cfg.Kill == nil {
		pid, ok := cfg.Pids[cfg.GatewayName]
		if !ok {
			return nil, fmt.Errorf("storm: no pid of %s to kill", cfg.GatewayName)
		}
		cfg.Kill = func() error { return syscall.Kill(pid, syscall.SIGKILL) }
	}
	if err := ensureFiles(cfg.Clients + cfg.Chats); err != nil {
		return nil, err
	}
	r := &stormRun{cfg: cfg, d: newDialers(cfg.Sources), resumeAPI: newAPI(cfg.Gateways[cfg.Resume : cfg.Resume+1]), errors: map[string]int64{}, redialErr: map[string]int64{}, allResume: make(chan struct{}),
		idPrefix: []byte("lg-" + cfg.RunID + "-"), perChat: int64(cfg.Clients / cfg.Chats)}
	for i := range r.shards {
		r.shards[i].h = hdrhistogram.New(1, 60_000_000, 3)
	}
	r.acked = make([]atomic.Bool, int64(cfg.Rate*(cfg.Before+cfg.Timeout+cfg.After).Seconds()))
	a := newAPI(cfg.Gateways)
	fmt.Fprintf(cfg.Log, "storm: setting up %d users and %d chats ...\n", users, cfg.Chats)
	names, tokens, err := a.setupUsers(ctx, cfg.TokenFile, cfg.UserPrefix, cfg.Password, users, cfg.Setup)
	if err != nil {
		return nil, fmt.Errorf("storm: %w", err)
	}
	r.tokens = tokens
	chatIDs := make([]int64, cfg.Chats)
	// After the connections' close (deferred below), through the gateway
	// that stays up; registered first, so a failed set-up retires what it
	// made.
	retire := make([]runChat, cfg.Chats)
	defer func() { r.resumeAPI.retireChats(ctx, cfg.Log, cfg.Setup, retire) }()
	err = parallel(ctx, cfg.Chats, cfg.Setup, func(ctx context.Context, c int) error {
		first := c * cfg.Members
		id, err := a.createChat(ctx, c, tokens[first], fmt.Sprintf("lg-s-%s-%d", cfg.RunID, c), names[first+1:first+cfg.Members])
		chatIDs[c] = id
		retire[c] = runChat{id: id, token: tokens[first], members: names[first+1 : first+cfg.Members]}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("storm: chats: %w", err)
	}

	// Client k is user k mod users (of chat (k mod users) / members).
	fmt.Fprintf(cfg.Log, "storm: opening %d websockets to %s and %d senders to %s ...\n",
		cfg.Clients, cfg.Gateways[cfg.Gateway], cfg.Chats, cfg.Gateways[cfg.Resume])
	clients := make([]*stormClient, cfg.Clients)
	senders := make([]*websocket.Conn, cfg.Chats)
	var readers sync.WaitGroup
	closeAll := func() {
		r.stopping.Store(true)
		for _, c := range clients {
			if c != nil {
				if ws := c.ws.Load(); ws != nil {
					ws.Close()
				}
			}
		}
		for _, ws := range senders {
			if ws != nil {
				ws.Close()
			}
		}
		readers.Wait()
	}
	defer closeAll()
	runCtx := ctx
	err = parallel(ctx, cfg.Clients, cfg.Setup, func(ctx context.Context, k int) error {
		u := k % users
		ws, rest, err := r.d.dialQuery(ctx, k, cfg.Gateways[cfg.Gateway], "", tokens[u])
		if err != nil {
			return err
		}
		c := &stormClient{i: k, user: u, chat: u / cfg.Members, chatID: chatIDs[u/cfg.Members]}
		c.ws.Store(ws)
		clients[k] = c
		rest = append([]byte{}, rest...)
		readers.Add(1)
		go func() {
			defer readers.Done()
			r.client(runCtx, c, rest)
		}()
		return nil
	})
	if err == nil {
		err = parallel(ctx, cfg.Chats, cfg.Setup, func(ctx context.Context, c int) error {
			ws, err := r.d.dial(ctx, c, cfg.Gateways[cfg.Resume], tokens[c*cfg.Members])
			if err != nil {
				return err
			}
			senders[c] = ws
			readers.Add(1)
			go func() {
				defer readers.Done()
				r.senderReader(ws)
			}()
			return nil
		})
	}
	if err != nil {
		return nil, fmt.Errorf("storm: connections: %w%s", err, staleHint(cfg.TokenFile))
	}

	before := snapshot(cfg.Pids)
	sendCtx, stopSending := context.WithCancel(ctx)
	defer stopSending()
	sendDone := make(chan int64, 1)
	go func() { sendDone <- r.send(sendCtx, senders, chatIDs) }()

	fmt.Fprintf(cfg.Log, "storm: sending %.0f/s; killing %s in %s ...\n", cfg.Rate, cfg.GatewayName, cfg.Before)
	if !sleepCtx(ctx, cfg.Before) {
		return nil, ctx.Err()
	}
	r.killAt.Store(time.Now().UnixNano())
	if err := cfg.Kill(); err != nil {
		return nil, fmt.Errorf("storm: kill %s: %w", cfg.GatewayName, err)
	}
	rep := &StormReport{Scenario: "storm", Clients: cfg.Clients, Chats: cfg.Chats, Killed: cfg.GatewayName, Rate: cfg.Rate}
	select {
	case <-r.allResume:
	case <-time.After(cfg.Timeout):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	fmt.Fprintf(cfg.Log, "storm: %d of %d clients resumed in %s\n", r.resumed.Load(), cfg.Clients,
		time.Since(time.Unix(0, r.killAt.Load())).Round(time.Millisecond))
	sleepCtx(ctx, cfg.After)
	stopSending()
	sends := <-sendDone
	deadline := time.Now().Add(cfg.Drain)
	rep.DrainTimedOut = true
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if r.acks.Load()+r.errorCount() >= sends && r.received.Load() >= r.expected.Load() {
			rep.DrainTimedOut = false
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	after := snapshot(cfg.Pids)
	closeAll()

	rep.Sends, rep.Acks, rep.Errors, rep.ReconnectErrors = sends, r.acks.Load(), r.errors, r.redialErr
	rep.Expected, rep.Received, rep.ReconnectAttempts = r.expected.Load(), r.received.Load(), r.attempts.Load()
	rep.Resumed = r.resumed.Load()
	rep.NotResumed = int64(cfg.Clients) - rep.Resumed
	h := hdrhistogram.New(1, 600_000_000, 3)
	got := make([]bitset, len(clients))
	chatOf := make([]int, len(clients))
	for k, c := range clients {
		if d := c.resumedAfter.Load(); d > 0 {
			_ = h.RecordValue(max(d/1e3, 1))
		}
		rep.Duplicated += c.tally.duplicated
		rep.OutOfOrder += c.tally.outOfOrder
		got[k], chatOf[k] = c.got, c.chat
	}
	rep.ResumeMs = latencyOf(h)
	rep.AllResumedSec = float64(h.Max()) / 1e6
	acked := make([]bool, sends)
	for i := range acked {
		acked[i] = r.acked[i].Load()
	}
	rep.Lost, rep.UnackedDelivered = deliveries(got, chatOf, acked, cfg.Chats)
	lat := hdrhistogram.New(1, 60_000_000, 3)
	for i := range r.shards {
		lat.Merge(r.shards[i].h)
	}
	rep.Latency = latencyOf(lat)
	rep.Processes = processes(cfg.Pids, before, after)
	return rep, nil
}

// senderReader reads a sender connection's acks and errors.
func (r *stormRun) senderReader(ws *websocket.Conn) {
	var (
		buf bytes.Buffer
		ev  inbound
	)
	_ = readFrames(ws, &buf, func(frame []byte, _ int64) {
		bad := events(frame, &ev, func(ev *inbound) {
			switch {
			case bytes.Equal(ev.Type, typeAck):
				if i := sendIndex(ev.ClientMsgID, r.idPrefix); i >= 0 && i < int64(len(r.acked)) {
					r.acked[i].Store(true)
					r.acks.Add(1)
					r.expected.Add(r.perChat)
				}
			case bytes.Equal(ev.Type, typeError):
				r.countError(strings.Trim(string(ev.Code), `"`))
			}
		})
		for range bad {
			r.countError("undecodable_event")
		}
	})
	if !r.stopping.Load() {
		r.countError("sender_connection_lost")
	}
}

// send sends open loop at cfg.Rate until ctx ends: send i goes to chat i
// mod chats from its sender connection, stamped with its intended time.
func (r *stormRun) send(ctx context.Context, senders []*websocket.Conn, chatIDs []int64) int64 {
	cfg := r.cfg
	frame := make([]byte, 0, 256)
	n, _ := openLoop(ctx, cfg.Rate, int64(len(r.acked)), func(i int64, intended time.Time) {
		chat := int(i % int64(cfg.Chats))
		frame = append(frame[:0], `{"type":"send","chat_id":`...)
		frame = strconv.AppendInt(frame, chatIDs[chat], 10)
		frame = append(frame, `,"client_msg_id":"`...)
		frame = append(frame, r.idPrefix...)
		frame = strconv.AppendInt(frame, i, 10)
		frame = append(frame, `","text":"`...)
		frame = stamp.Append(frame, intended.UnixNano())
		frame = append(frame, `"}`...)
		ws := senders[chat]
		_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := ws.WriteMessage(websocket.TextMessage, frame); err != nil {
			r.countError("write_failed")
		}
	})
	return n
}

// WriteTable writes the report as a table.
func (rep *StormReport) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "scenario storm: %d clients of %s (killed) resume on another gateway; %.0f sends/s into their %d chats\n",
		rep.Clients, rep.Killed, rep.Rate, rep.Chats)
	row := func(k string, v any) { fmt.Fprintf(w, "  %-28s %v\n", k, v) }
	row("resumed", rep.Resumed)
	row("not resumed", rep.NotResumed)
	row("all resumed after s", fmt.Sprintf("%.2f", rep.AllResumedSec))
	row("kill->resumed ms p50/p90/p99", fmt.Sprintf("%.0f / %.0f / %.0f", rep.ResumeMs.P50, rep.ResumeMs.P90, rep.ResumeMs.P99))
	row("reconnect attempts", rep.ReconnectAttempts)
	for _, cause := range ErrorCodes(rep.ReconnectErrors) {
		row("failed reconnects "+cause, rep.ReconnectErrors[cause])
	}
	row("sends", rep.Sends)
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
	row("latency ms p50/p99/max", fmt.Sprintf("%.2f / %.2f / %.2f", rep.Latency.P50, rep.Latency.P99, rep.Latency.Max))
	writeProcesses(w, rep.Processes, 0)
}

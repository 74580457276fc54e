package scenario

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gorilla/websocket"

	"github.com/communications/communications/loadgen/stamp"
)

// BroadcastConfig configures the broadcast scenario: the fanout scenario's
// shape against a plain websocket broadcast server (cmd/wsbroadcast), the
// baseline for the gateway. Zero fields take the defaults given.
type BroadcastConfig struct {
	// Target's Gateways are the broadcast servers' base URLs
	// (http://HOST:PORT); all connections of a room go to the same server,
	// rooms round-robin. Pids names the processes to measure.
	Target
	Rooms   int     // rooms (100)
	Members int     // connections per room (50)
	Rate    float64 // sends a second over all rooms (1000)
	// Duration is how long sends go on (30s); Drain how long to wait
	// afterwards for outstanding deliveries (30s); the wait ends as soon as
	// every send has reached every member.
	Duration, Drain time.Duration
	// Sources is the number of loopback source addresses 127.0.0.1..N (16).
	Sources int
	// Setup is how many dials run at once (32).
	Setup int
	// RunID makes room names unique (the time).
	RunID string
	// Log receives progress lines (nil: none).
	Log io.Writer
}

func (c *BroadcastConfig) defaults() {
	setDefault(&c.Rooms, 100)
	setDefault(&c.Members, 50)
	setDefault(&c.Rate, 1000)
	setDefault(&c.Duration, 30*time.Second)
	setDefault(&c.Drain, 30*time.Second)
	setDefault(&c.Sources, 16)
	setDefault(&c.Setup, 32)
	setDefault(&c.RunID, newRunID())
	setDefault(&c.Log, io.Discard)
}

// BroadcastReport holds the figures of a broadcast run.
type BroadcastReport struct {
	Scenario    string  `json:"scenario"`
	Rooms       int     `json:"rooms"`
	Members     int     `json:"members"`
	Servers     int     `json:"servers"`
	Rate        float64 `json:"rate_per_second"`
	DurationSec float64 `json:"duration_seconds"`
	Connections int     `json:"connections"`
	Sends       int64   `json:"sends"`
	// SendRate is the rate actually achieved (sends over the send window).
	SendRate float64 `json:"achieved_send_rate"`
	// WriteErrors counts sends whose write failed (not expected anywhere).
	WriteErrors int64 `json:"write_errors"`
	// Expected is every written send times its room's members, the
	// sender included.
	Expected int64 `json:"deliveries_expected"`
	Received int64 `json:"deliveries_received"`
	// Lost counts (written send, member) pairs never received.
	Lost       int64     `json:"lost"`
	Duplicated int64     `json:"duplicated"`
	OutOfOrder int64     `json:"out_of_order"`
	Undecoded  int64     `json:"undecodable_events"`
	Latency    Latency   `json:"latency"`
	Processes  []Process `json:"processes"`
	// CPU per delivered message, in microseconds: of the measured server
	// processes together, and of the load generator.
	ServerCPUPerDeliveryUs  float64 `json:"server_cpu_us_per_delivery"`
	LoadgenCPUPerDeliveryUs float64 `json:"loadgen_cpu_us_per_delivery"`
}

// broadcastRun is the state of one run shared by its goroutines.
type broadcastRun struct {
	cfg       BroadcastConfig
	written   []atomic.Bool // written[i]: send i was written
	shards    [latencyShards]shard
	received  atomic.Int64
	undecoded atomic.Int64
}

// read is a connection's reader goroutine, until the connection closes.
// A message is an event like the gateway's message events (decoded the same
// way, so the load generator's cost per delivery compares): its chat_id is
// the room's number and its seq the send's number within the room, from 1.
func (r *broadcastRun) read(c *conn, sh *shard) {
	var (
		buf bytes.Buffer
		ev  inbound
	)
	_ = readFrames(c.ws, &buf, func(frame []byte, now int64) {
		bad := events(frame, &ev, func(ev *inbound) {
			if !bytes.Equal(ev.Type, typeMessage) || ev.ChatID != c.chatID {
				return
			}
			c.tally.observe(ev.Seq)
			r.received.Add(1)
			c.got.add(ev.Seq - 1)
			sh.recordStamp(ev.Text, now)
		})
		r.undecoded.Add(int64(bad))
	})
}

// RunBroadcast runs the broadcast scenario: Rooms rooms of Members
// websockets each, and sends at a constant total rate, each stamped with
// its intended send time, as the fanout scenario does, to a plain
// broadcast server that relays every message to its room.
func RunBroadcast(ctx context.Context, cfg BroadcastConfig) (*BroadcastReport, error) {
	cfg.defaults()
	if len(cfg.Gateways) == 0 {
		return nil, fmt.Errorf("broadcast: no servers")
	}
	if cfg.Members < 1 {
		return nil, fmt.Errorf("broadcast: members must be at least 1, not %d", cfg.Members)
	}
	n := cfg.Rooms * cfg.Members
	if err := ensureFiles(n); err != nil {
		return nil, err
	}
	r := &broadcastRun{cfg: cfg, written: make([]atomic.Bool, int64(cfg.Duration.Seconds()*cfg.Rate))}
	for i := range r.shards {
		r.shards[i].h = hdrhistogram.New(1, 60_000_000, 3) // 1 us to 60 s
	}

	start := time.Now()
	fmt.Fprintf(cfg.Log, "broadcast: opening %d websockets ...\n", n)
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
	err := parallel(ctx, n, cfg.Setup, func(ctx context.Context, i int) error {
		room := i / cfg.Members
		ws, err := d.dialRoom(ctx, i, cfg.Gateways[room%len(cfg.Gateways)], fmt.Sprintf("%s-%d", cfg.RunID, room))
		if err != nil {
			return err
		}
		c := &conn{ws: ws, chatID: int64(room + 1), chat: room}
		conns[i] = c
		readers.Add(1)
		go func() {
			defer readers.Done()
			r.read(c, &r.shards[i%latencyShards])
		}()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("broadcast: connections: %w", err)
	}
	fmt.Fprintf(cfg.Log, "broadcast: %d connections ready in %s; sending %.0f/s for %s ...\n",
		n, time.Since(start).Round(time.Millisecond), cfg.Rate, cfg.Duration)

	before := snapshot(cfg.Pids)
	sends, writeErrors, sendWindow := r.send(ctx, conns)
	expected := (sends - writeErrors) * int64(cfg.Members)
	deadline := time.Now().Add(cfg.Drain)
	for time.Now().Before(deadline) && ctx.Err() == nil && r.received.Load() < expected {
		time.Sleep(20 * time.Millisecond)
	}
	after := snapshot(cfg.Pids)
	for _, c := range conns {
		c.ws.Close()
	}
	readers.Wait()

	rep := &BroadcastReport{
		Scenario: "broadcast", Rooms: cfg.Rooms, Members: cfg.Members, Servers: len(cfg.Gateways),
		Rate: cfg.Rate, DurationSec: cfg.Duration.Seconds(), Connections: n, Sends: sends,
		SendRate: float64(sends) / sendWindow.Seconds(), WriteErrors: writeErrors,
		Expected: expected, Received: r.received.Load(), Undecoded: r.undecoded.Load(),
	}
	got := make([]bitset, n)
	chatOf := make([]int, n)
	for k, c := range conns {
		rep.Duplicated += c.tally.duplicated
		rep.OutOfOrder += c.tally.outOfOrder
		got[k], chatOf[k] = c.got, c.chat
	}
	written := make([]bool, sends)
	for i := range written {
		written[i] = r.written[i].Load()
	}
	rep.Lost, _ = deliveries(got, chatOf, written, cfg.Rooms)
	h := hdrhistogram.New(1, 60_000_000, 3)
	for i := range r.shards {
		h.Merge(r.shards[i].h)
	}
	rep.Latency = latencyOf(h)
	rep.Processes = processes(cfg.Pids, before, after)
	if rep.Received > 0 {
		per := func(cpu float64) float64 { return cpu * 1e6 / float64(rep.Received) }
		var servers float64
		for _, p := range rep.Processes {
			if p.Name == loadgenName {
				rep.LoadgenCPUPerDeliveryUs = per(p.CPUSeconds)
			} else {
				servers += p.CPUSeconds
			}
		}
		rep.ServerCPUPerDeliveryUs = per(servers)
	}
	return rep, nil
}

// send is the open-loop sender, as the fanout scenario's: send i is
// intended at start + i/rate and goes to room i mod rooms from its members
// in turn. It writes a message event as the gateway would deliver it
// (about the same size), with the intended time in its text.
func (r *broadcastRun) send(ctx context.Context, conns []*conn) (sends, writeErrors int64, window time.Duration) {
	cfg := r.cfg
	frame := make([]byte, 0, 320)
	sends, window = openLoop(ctx, cfg.Rate, int64(len(r.written)), func(i int64, intended time.Time) {
		room := i % int64(cfg.Rooms)
		member := int(i/int64(cfg.Rooms)) % cfg.Members
		k := int(room)*cfg.Members + member
		c := conns[k]
		frame = append(frame[:0], `{"type":"message","chat_id":`...)
		frame = strconv.AppendInt(frame, room+1, 10)
		frame = append(frame, `,"seq":`...)
		frame = strconv.AppendInt(frame, i/int64(cfg.Rooms)+1, 10)
		frame = append(frame, `,"sender_id":`...)
		frame = strconv.AppendInt(frame, int64(k+1), 10)
		frame = fmt.Appendf(frame, `,"sender":"lg_u%06d","client_msg_id":"lg-%s-`, k, cfg.RunID)
		frame = strconv.AppendInt(frame, i, 10)
		frame = append(frame, `","text":"`...)
		frame = stamp.Append(frame, intended.UnixNano())
		frame = append(frame, `","sent_at":"`...)
		frame = intended.UTC().AppendFormat(frame, time.RFC3339Nano)
		frame = append(frame, `"}`...)
		_ = c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := c.ws.WriteMessage(websocket.TextMessage, frame); err != nil {
			writeErrors++
			return
		}
		r.written[i].Store(true)
	})
	return sends, writeErrors, window
}

// dialRoom opens connection number i to the broadcast server at base in
// room and returns it with the server's hello read.
func (d dialers) dialRoom(ctx context.Context, i int, base, room string) (*websocket.Conn, error) {
	u := "ws" + strings.TrimPrefix(base, "http") + "/ws?room=" + url.QueryEscape(room)
	c, resp, err := d[i%len(d)].DialContext(ctx, u, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %d)", u, err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial %s: %w", u, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, b, err := c.ReadMessage()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read hello: %w", err)
	}
	var hello struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(b, &hello); err != nil || hello.Type != "hello" {
		c.Close()
		return nil, fmt.Errorf("first frame is not hello: %.100s", b)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}

// WriteTable writes the report as a table.
func (rep *BroadcastReport) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "scenario broadcast: %d rooms x %d members over %d servers, %.0f sends/s for %.0f s\n",
		rep.Rooms, rep.Members, rep.Servers, rep.Rate, rep.DurationSec)
	row := func(k string, v any) { fmt.Fprintf(w, "  %-28s %v\n", k, v) }
	row("connections", rep.Connections)
	row("sends", rep.Sends)
	row("achieved send rate /s", fmt.Sprintf("%.1f", rep.SendRate))
	row("write errors", rep.WriteErrors)
	row("deliveries expected", rep.Expected)
	row("deliveries received", rep.Received)
	row("lost", rep.Lost)
	row("duplicated", rep.Duplicated)
	row("out of order", rep.OutOfOrder)
	if rep.Undecoded > 0 {
		row("undecodable events", rep.Undecoded)
	}
	row("latency ms p50/p90/p99", fmt.Sprintf("%.2f / %.2f / %.2f", rep.Latency.P50, rep.Latency.P90, rep.Latency.P99))
	row("latency ms p99.9/max", fmt.Sprintf("%.2f / %.2f", rep.Latency.P999, rep.Latency.Max))
	row("server CPU us/delivery", fmt.Sprintf("%.2f", rep.ServerCPUPerDeliveryUs))
	row("loadgen CPU us/delivery", fmt.Sprintf("%.2f", rep.LoadgenCPUPerDeliveryUs))
	writeProcesses(w, rep.Processes, rep.Received)
}

package natsbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
)

type echoReq struct {
	Say string `json:"say"`
}

type echoResp struct {
	Said    string `json:"said"`
	TraceID string `json:"trace_id"`
}

func TestRequestReply(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	logger := telemetry.NewLogger(io.Discard, 0)

	srv := NewServer(nc, tp, logger, time.Second)
	_, err = Handle(context.Background(), srv, "t.echo", "q", func(ctx context.Context, req echoReq) (echoResp, error) {
		switch req.Say {
		case "coded":
			return echoResp{}, busapi.Errorf(protocol.CodeNotAMember, "nope")
		case "boom":
			return echoResp{}, errors.New("database exploded")
		}
		return echoResp{Said: req.Say, TraceID: trace.SpanContextFromContext(ctx).TraceID().String()}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	client := NewClient(nc, tp)

	t.Run("reply carries data and the trace continues", func(t *testing.T) {
		ctx, span := tp.Tracer("test").Start(context.Background(), "caller")
		defer span.End()
		var resp echoResp
		if err := client.Request(ctx, "t.echo", echoReq{Say: "hi"}, &resp); err != nil {
			t.Fatal(err)
		}
		if resp.Said != "hi" {
			t.Errorf("said %q, want hi", resp.Said)
		}
		if want := span.SpanContext().TraceID().String(); resp.TraceID != want {
			t.Errorf("handler saw trace %s, want the caller's %s", resp.TraceID, want)
		}
	})
	t.Run("coded error reaches the caller", func(t *testing.T) {
		err := client.Request(context.Background(), "t.echo", echoReq{Say: "coded"}, nil)
		if got := busapi.CodeOf(err); got != protocol.CodeNotAMember {
			t.Errorf("code = %s (%v), want not_a_member", got, err)
		}
	})
	t.Run("internal error is hidden", func(t *testing.T) {
		err := client.Request(context.Background(), "t.echo", echoReq{Say: "boom"}, nil)
		var be *busapi.Error
		if !errors.As(err, &be) || be.Code != protocol.CodeInternal {
			t.Fatalf("error = %v, want code internal", err)
		}
		if be.Message != "internal error" {
			t.Errorf("message %q leaks the cause", be.Message)
		}
	})
	t.Run("no responder is unavailable", func(t *testing.T) {
		err := client.Request(context.Background(), "t.nobody", echoReq{}, nil)
		if got := busapi.CodeOf(err); got != protocol.CodeUnavailable {
			t.Errorf("code = %s (%v), want unavailable", got, err)
		}
	})
	t.Run("data passed on as encoded", func(t *testing.T) {
		raw, err := client.RequestJSON(context.Background(), "t.echo", echoReq{Say: `a "quoted" <b>`})
		if err != nil {
			t.Fatal(err)
		}
		if want := `{"said":"a \"quoted\" \u003cb\u003e","trace_id":"`; !strings.HasPrefix(string(raw), want) || !strings.HasSuffix(string(raw), `"}`) {
			t.Errorf("data = %s, want the handler's answer as json.Marshal encodes it", raw)
		}
		var resp echoResp
		if err := json.Unmarshal(raw, &resp); err != nil || resp.Said != `a "quoted" <b>` {
			t.Errorf("data decodes to %+v (%v)", resp, err)
		}
	})
	t.Run("coded error reaches the raw caller", func(t *testing.T) {
		raw, err := client.RequestJSON(context.Background(), "t.echo", echoReq{Say: "coded"})
		if got := busapi.CodeOf(err); got != protocol.CodeNotAMember || raw != nil {
			t.Errorf("code = %s (%v), data %s, want not_a_member and no data", got, err, raw)
		}
	})
	t.Run("malformed request is bad_request", func(t *testing.T) {
		msg, err := nc.Request("t.echo", []byte("{not json"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if want := `{"error":{"code":"bad_request","message":"malformed request"}}`; string(msg.Data) != want {
			t.Errorf("reply = %s, want %s", msg.Data, want)
		}
	})
}

func TestHandleAppend(t *testing.T) {
	t.Parallel()
	nc := testenv.NATSConn(t)
	tp := sdktrace.NewTracerProvider()
	srv := NewServer(nc, tp, telemetry.NewLogger(io.Discard, 0), time.Second)
	t.Cleanup(func() {
		// Every handler has put its buffer back before the test ends
		// (TestHandleBuffers replaces the pool).
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	_, err := HandleAppend(context.Background(), srv, "t.append", "q", func(ctx context.Context, req echoReq, dst []byte) ([]byte, error) {
		switch req.Say {
		case "coded":
			return append(dst, "partial"...), busapi.Errorf(protocol.CodeNotAMember, "nope")
		case "boom":
			return dst, errors.New("database exploded")
		}
		// The handler encodes its data itself: a reply as long as the
		// request asks, so that replies of different lengths share buffers.
		dst = append(dst, `{"said":`...)
		b, _ := json.Marshal(req.Say)
		dst = append(dst, b...)
		return append(dst, '}'), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	client := NewClient(nc, tp)

	t.Run("data reaches Request and RequestJSON", func(t *testing.T) {
		var resp echoResp
		if err := client.Request(context.Background(), "t.append", echoReq{Say: "hi"}, &resp); err != nil || resp.Said != "hi" {
			t.Errorf("Request: %+v, %v; want said hi", resp, err)
		}
		raw, err := client.RequestJSON(context.Background(), "t.append", echoReq{Say: "<hi>"})
		if want := `{"said":"\u003chi\u003e"}`; err != nil || string(raw) != want {
			t.Errorf("RequestJSON: %s, %v; want %s", raw, err, want)
		}
	})
	t.Run("the whole reply is the envelope", func(t *testing.T) {
		msg, err := nc.Request("t.append", []byte(`{"say":"x"}`), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if want := `{"data":{"said":"x"}}`; string(msg.Data) != want {
			t.Errorf("reply = %s, want %s", msg.Data, want)
		}
	})
	t.Run("errors as with Handle", func(t *testing.T) {
		for _, c := range []struct {
			say, want string
		}{
			{"coded", `{"error":{"code":"not_a_member","message":"nope"}}`},
			{"boom", `{"error":{"code":"internal","message":"internal error"}}`},
		} {
			msg, err := nc.Request("t.append", []byte(`{"say":"`+c.say+`"}`), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if string(msg.Data) != c.want {
				t.Errorf("%s: reply = %s, want %s", c.say, msg.Data, c.want)
			}
		}
		msg, err := nc.Request("t.append", []byte("{not json"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if want := `{"error":{"code":"bad_request","message":"malformed request"}}`; string(msg.Data) != want {
			t.Errorf("malformed: reply = %s, want %s", msg.Data, want)
		}
	})
	t.Run("concurrent replies never share a buffer", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for i := range 200 {
			wg.Go(func() {
				errs <- func() error {
					say := strings.Repeat(string(rune('a'+i%26)), 1+i*37%5000)
					raw, err := client.RequestJSON(context.Background(), "t.append", echoReq{Say: say})
					if err != nil {
						return err
					}
					if want := `{"said":"` + say + `"}`; string(raw) != want {
						return fmt.Errorf("request %d: got %d bytes %.40s..., want %d bytes %.40s...", i, len(raw), raw, len(want), want)
					}
					return nil
				}()
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})
}

// TestHandleBuffers: Handle's replies (json.Marshal's, allocated for each
// reply) do not go into the buffers HandleAppend reuses, and a reply
// encoding/json cannot encode is answered internal. Not parallel: it
// replaces the pool of buffers, which parallel tests share.
func TestHandleBuffers(t *testing.T) {
	nc := testenv.NATSConn(t)
	// A pool of its own: one emptied by Get may still hold a buffer in
	// another processor's private slot.
	shared := replyBufs
	replyBufs = new(sync.Pool)
	t.Cleanup(func() { replyBufs = shared })
	srv := NewServer(nc, sdktrace.NewTracerProvider(), telemetry.NewLogger(io.Discard, 0), 5*time.Second)
	// The requests are all under way at once, so that each would have a
	// buffer of its own to put back.
	const n = 20
	var arrived sync.WaitGroup
	arrived.Add(n)
	if _, err := Handle(context.Background(), srv, "t.plain", "q", func(_ context.Context, req echoReq) (echoResp, error) {
		arrived.Done()
		arrived.Wait()
		return echoResp{Said: strings.Repeat(req.Say, 100)}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := Handle(context.Background(), srv, "t.nan", "q", func(context.Context, echoReq) (float64, error) {
		return math.NaN(), nil // encoding/json refuses it
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	client := NewClient(nc, sdktrace.NewTracerProvider())
	errs := make(chan error, n)
	for range n {
		go func() {
			var resp echoResp
			err := client.Request(context.Background(), "t.plain", echoReq{Say: "ab"}, &resp)
			if err == nil && len(resp.Said) != 200 {
				err = fmt.Errorf("%d bytes said, want 200", len(resp.Said))
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	msg, err := nc.Request("t.nan", []byte(`{}`), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"error":{"code":"internal","message":"internal error"}}`; string(msg.Data) != want {
		t.Errorf("unencodable reply: %s, want %s", msg.Data, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil { // every handler has returned
		t.Fatal(err)
	}
	pooled := 0
	for replyBufs.Get() != nil {
		pooled++
	}
	if pooled != 0 {
		t.Errorf("%d buffers pooled after %d replies of Handle, want none", pooled, n+1)
	}
}

func TestDrain(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := Drain(ctx, nc); err != nil {
		t.Fatal(err)
	}
	if !nc.IsClosed() {
		t.Error("connection not closed after Drain")
	}
}

// TestShutdownFinishesRequests: requests received before Shutdown are
// answered; Shutdown returns after them; later requests find no responder.
func TestShutdownFinishesRequests(t *testing.T) {
	t.Parallel()
	nc := testenv.NATSConn(t)
	tp := sdktrace.NewTracerProvider()
	srv := NewServer(nc, tp, telemetry.NewLogger(io.Discard, 0), 5*time.Second)
	started := make(chan struct{}, 10)
	release := make(chan struct{})
	_, err := Handle(context.Background(), srv, "t.slow", "q", func(ctx context.Context, req echoReq) (echoResp, error) {
		started <- struct{}{}
		<-release
		return echoResp{Said: req.Say}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	client := NewClient(nc, tp)
	const n = 3
	results := make(chan error, n)
	for range n {
		go func() {
			var resp echoResp
			err := client.Request(context.Background(), "t.slow", echoReq{Say: "x"}, &resp)
			if err == nil && resp.Said != "x" {
				err = errors.New("wrong answer")
			}
			results <- err
		}()
	}
	// All n run at once (they would be serialised without the workers).
	for range n {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("requests were not handled concurrently")
		}
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while requests were running", err)
	default:
	}
	close(release)
	for range n {
		if err := <-results; err != nil {
			t.Errorf("request in flight at shutdown: %v", err)
		}
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	err = client.Request(context.Background(), "t.slow", echoReq{Say: "late"}, nil)
	if busapi.CodeOf(err) != protocol.CodeUnavailable {
		t.Errorf("request after shutdown: %v, want unavailable", err)
	}
}

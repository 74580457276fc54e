package natsbus

import (
	"context"
	"errors"
	"io"
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

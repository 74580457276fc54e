package natsbus

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
)

// observations returns the sample count of each series of the histogram
// name, keyed by "subject outcome".
func observations(t *testing.T, reg *prometheus.Registry, name string) map[string]uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			out[labels["subject"]+" "+labels["outcome"]] = m.GetHistogram().GetSampleCount()
		}
	}
	return out
}

// TestRequestMetrics: both sides record each request under its subject
// without the prefix and its outcome; a subject outside the prefix is
// "other".
func TestRequestMetrics(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "pre")
	if err != nil {
		t.Fatal(err)
	}
	tp := noop.NewTracerProvider()
	srv := NewServer(nc, tp, telemetry.NewLogger(io.Discard, 0), time.Second, WithMetrics(m))
	echo := func(_ context.Context, req echoReq) (echoResp, error) {
		switch req.Say {
		case "coded":
			return echoResp{}, busapi.Errorf(protocol.CodeNotAMember, "nope")
		case "boom":
			return echoResp{}, errors.New("database exploded")
		}
		return echoResp{Said: req.Say}, nil
	}
	for _, subj := range []string{"pre.chat.echo", "elsewhere.echo"} {
		if _, err := Handle(context.Background(), srv, subj, "q", echo); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	client := NewClient(nc, tp, WithMetrics(m))
	ctx := context.Background()
	for _, say := range []string{"hi", "hi", "coded", "boom"} {
		_ = client.Request(ctx, "pre.chat.echo", echoReq{Say: say}, nil)
	}
	if _, err := client.RequestJSON(ctx, "pre.chat.echo", echoReq{Say: "hi"}); err != nil {
		t.Fatal(err)
	}
	if err := client.Request(ctx, "pre.nobody.home", echoReq{}, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("request without responders: %v, want ErrUnavailable", err)
	}
	if err := client.Request(ctx, "elsewhere.echo", echoReq{Say: "hi"}, nil); err != nil {
		t.Fatal(err)
	}

	wantClient := map[string]uint64{
		"chat.echo ok": 3, "chat.echo error": 2, "nobody.home unavailable": 1, "other ok": 1,
	}
	if diff := cmp.Diff(wantClient, observations(t, reg, "natsbus_request_duration_seconds")); diff != "" {
		t.Errorf("client histogram counts (-want +got):\n%s", diff)
	}
	// The server records after it replied: poll.
	wantServer := map[string]uint64{
		"chat.echo ok": 3, "chat.echo error": 1, "chat.echo internal": 1, "other ok": 1,
	}
	testenv.EventuallyDescribe(t, 5*time.Second, func() bool {
		return cmp.Equal(wantServer, observations(t, reg, "natsbus_handle_duration_seconds"))
	}, func() string {
		return "server histogram counts (-want +got):\n" + cmp.Diff(wantServer, observations(t, reg, "natsbus_handle_duration_seconds"))
	})
}

func TestNilMetricsRecordNothing(t *testing.T) {
	t.Parallel()
	var m *Metrics
	// Must not panic.
	m.observeRequest("x", time.Now(), nil)
	m.observeHandled("x", time.Now(), OutcomeOK)
	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg, "a"); err == nil {
		t.Error("registering the metrics twice in one registry: no error")
	}
}

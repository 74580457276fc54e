package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

func TestLoggerAddsTraceIDs(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	logger := NewLogger(&buf, 0)
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	logger.InfoContext(ctx, "hello")
	span.End()

	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("log line is not JSON: %v: %s", err, buf.String())
	}
	if got, want := line["trace_id"], span.SpanContext().TraceID().String(); got != want {
		t.Errorf("trace_id = %v, want %v", got, want)
	}
	if got, want := line["span_id"], span.SpanContext().SpanID().String(); got != want {
		t.Errorf("span_id = %v, want %v", got, want)
	}
}

// TestSpansRecordedOnlyWhenExported: without an OTLP endpoint spans record
// nothing, even under a sampled remote parent, yet keep the trace id (for
// logs and propagation); with one they are recorded.
func TestSpansRecordedOnlyWhenExported(t *testing.T) {
	t.Parallel()
	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3},
		SpanID:     trace.SpanID{4, 5, 6},
		TraceFlags: trace.FlagsSampled,
		Remote:     true,
	})
	for _, tc := range []struct {
		endpoint string
		record   bool
	}{
		{"", false},
		// The exporter connects only when it exports; these spans never end.
		{"http://127.0.0.1:1", true},
	} {
		var buf bytes.Buffer
		tel, err := New(context.Background(), Config{ServiceName: "test", OTLPEndpoint: tc.endpoint}, &buf)
		if err != nil {
			t.Fatal(err)
		}
		tracer := tel.TracerProvider.Tracer("test")
		_, root := tracer.Start(context.Background(), "root")
		ctx, child := tracer.Start(trace.ContextWithRemoteSpanContext(context.Background(), parent), "child")
		if root.IsRecording() != tc.record || child.IsRecording() != tc.record {
			t.Errorf("endpoint %q: recording root %v, child %v; want %v", tc.endpoint, root.IsRecording(), child.IsRecording(), tc.record)
		}
		if !root.SpanContext().TraceID().IsValid() {
			t.Errorf("endpoint %q: root span has no trace id", tc.endpoint)
		}
		if got := child.SpanContext().TraceID(); got != parent.TraceID() {
			t.Errorf("endpoint %q: child trace id %s, want the parent's %s", tc.endpoint, got, parent.TraceID())
		}
		tel.Logger.InfoContext(ctx, "hello")
		if !bytes.Contains(buf.Bytes(), []byte(parent.TraceID().String())) {
			t.Errorf("endpoint %q: log line lacks the trace id: %s", tc.endpoint, buf.String())
		}
		if err := tel.Shutdown(context.Background()); err != nil {
			t.Errorf("endpoint %q: shutdown: %v", tc.endpoint, err)
		}
	}
}

// TestExportsOverOTLPHTTP: with an endpoint, a service's spans reach it as
// OTLP/HTTP protobuf on POST /v1/traces, named and carrying service.name.
func TestExportsOverOTLPHTTP(t *testing.T) {
	t.Parallel()
	received := make(chan *coltracepb.ExportTraceServiceRequest, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			t.Errorf("exporter sent %s %s, want POST /v1/traces", r.Method, r.URL.Path)
			http.Error(w, "not here", http.StatusNotFound)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
			t.Errorf("content type %q, want application/x-protobuf", ct)
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Error(err)
			return
		}
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			t.Errorf("decode export request: %v", err)
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		received <- &req
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)

	tel, err := New(context.Background(), Config{ServiceName: "chat", OTLPEndpoint: srv.URL}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "chat.send")
	want := span.SpanContext().TraceID()
	span.End()
	// Shutdown flushes the batch.
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	var req *coltracepb.ExportTraceServiceRequest
	select {
	case req = <-received:
	default:
		t.Fatal("nothing exported by the time Shutdown returned")
	}
	var found bool
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				if s.GetName() != "chat.send" {
					continue
				}
				found = true
				if service != "chat" {
					t.Errorf("span's resource service.name %q, want chat", service)
				}
				if got := trace.TraceID(s.GetTraceId()); got != want {
					t.Errorf("exported trace id %s, want %s", got, want)
				}
			}
		}
	}
	if !found {
		t.Errorf("no span chat.send in the export: %v", req)
	}
}

// TestSampleRatio: the ratio decides which new traces are recorded (1e-12
// of random trace ids: none of a few).
func TestSampleRatio(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ratio float64
		want  int
	}{{1, 20}, {1e-12, 0}} {
		tel, err := New(context.Background(), Config{ServiceName: "test", OTLPEndpoint: "http://127.0.0.1:1", SampleRatio: tc.ratio}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		recorded := 0
		for range 20 {
			// These spans never end: nothing is exported.
			if _, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "op"); span.IsRecording() {
				recorded++
			}
		}
		if recorded != tc.want {
			t.Errorf("ratio %v: %d of 20 new traces recorded, want %d", tc.ratio, recorded, tc.want)
		}
		if err := tel.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	}
}

// TestEndpointTrailingSlash: an endpoint given with a trailing slash
// exports to /v1/traces, not //v1/traces.
func TestEndpointTrailingSlash(t *testing.T) {
	t.Parallel()
	paths := make(chan string, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths <- r.URL.Path
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	tel, err := New(context.Background(), Config{ServiceName: "chat", OTLPEndpoint: srv.URL + "/"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "chat.send")
	span.End()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case got := <-paths:
		if got != "/v1/traces" {
			t.Errorf("exported to %s, want /v1/traces", got)
		}
	default:
		t.Fatal("nothing exported by the time Shutdown returned")
	}
}

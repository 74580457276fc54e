package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
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

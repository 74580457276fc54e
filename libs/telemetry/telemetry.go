// Package telemetry sets up what every service needs to be observed: a
// structured JSON logger that stamps trace and span ids on each line, an
// OpenTelemetry tracer provider (exporting over OTLP/HTTP when an endpoint is
// configured), the W3C propagator, and a Prometheus registry.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
)

// Config configures telemetry. The zero value logs at info level and exports
// no traces: spans then still carry trace and span ids (so logs are stamped
// and the context propagates to the next service) but record nothing, which
// costs next to nothing per request.
type Config struct {
	// ServiceName names the service in traces and logs. Required.
	ServiceName string
	// OTLPEndpoint is an OTLP/HTTP endpoint URL (for example
	// http://otel-collector:4318; a trailing slash is ignored). Empty: no
	// export.
	OTLPEndpoint string
	// SampleRatio is the share of new traces sampled, 0 to 1, when traces
	// are exported. Default 1.
	SampleRatio float64
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string
}

// Telemetry is the set-up of one service.
type Telemetry struct {
	Logger         *slog.Logger
	TracerProvider trace.TracerProvider
	Propagator     propagation.TextMapPropagator
	Registry       *prometheus.Registry
	shutdown       func(context.Context) error
}

// New builds telemetry writing logs to w. Call Shutdown to flush traces.
func New(ctx context.Context, cfg Config, w io.Writer) (*Telemetry, error) {
	if cfg.ServiceName == "" {
		return nil, errors.New("telemetry: service name is empty")
	}
	var level slog.Level
	if cfg.LogLevel != "" {
		if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
			return nil, fmt.Errorf("telemetry: log level: %w", err)
		}
	}
	logger := NewLogger(w, level).With("service", cfg.ServiceName)

	ratio := cfg.SampleRatio
	if ratio <= 0 || ratio > 1 {
		ratio = 1
	}
	res := resource.NewSchemaless(semconv.ServiceName(cfg.ServiceName))
	// With nowhere to export to, a recorded span would be built (attributes,
	// events, timestamps) only to be dropped: sample none, whatever the
	// parent says. Ids are still made and propagated.
	sampler := sdktrace.NeverSample()
	if cfg.OTLPEndpoint != "" {
		sampler = sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))
	}
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler),
	}
	if cfg.OTLPEndpoint != "" {
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(strings.TrimRight(cfg.OTLPEndpoint, "/")+"/v1/traces"))
		if err != nil {
			return nil, fmt.Errorf("telemetry: otlp exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(opts...)

	return &Telemetry{
		Logger:         logger,
		TracerProvider: tp,
		Propagator:     Propagator(),
		Registry:       NewRegistry(),
		shutdown:       tp.Shutdown,
	}, nil
}

// NewRegistry returns a Prometheus registry holding the Go runtime's and
// the process's metrics (go_*, process_*: CPU, memory, file descriptors).
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Shutdown flushes and stops trace export.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t.shutdown == nil {
		return nil
	}
	return t.shutdown(ctx)
}

// Propagator returns the W3C trace-context and baggage propagator used on
// HTTP, NATS headers and fanout envelopes.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// NewLogger returns a JSON logger that adds trace_id and span_id to every
// record logged with a context holding a span.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(traceHandler{slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})})
}

type traceHandler struct{ slog.Handler }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}

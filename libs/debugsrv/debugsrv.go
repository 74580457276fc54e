// Package debugsrv serves a service's operational endpoints on their own
// port: /healthz (the process is alive), /readyz (its dependencies answer
// and it is not shutting down), Prometheus /metrics and pprof.
package debugsrv

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check reports whether one dependency answers.
type Check func(ctx context.Context) error

// Readiness aggregates named checks and a shutting-down flag.
type Readiness struct {
	checks   map[string]Check
	draining atomic.Bool
}

// NewReadiness returns a readiness with the given checks.
func NewReadiness(checks map[string]Check) *Readiness {
	return &Readiness{checks: checks}
}

// StartDrain makes every later readiness probe fail.
func (r *Readiness) StartDrain() { r.draining.Store(true) }

// Draining reports whether StartDrain was called.
func (r *Readiness) Draining() bool { return r.draining.Load() }

// Ready runs every check with a short deadline and returns the failures by
// name. An empty map means ready.
func (r *Readiness) Ready(ctx context.Context) map[string]string {
	failed := map[string]string{}
	if r.draining.Load() {
		failed["shutdown"] = "shutting down"
		return failed
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for name, check := range r.checks {
		if err := check(ctx); err != nil {
			failed[name] = err.Error()
		}
	}
	return failed
}

// HealthzHandler answers 200 while the process runs.
func HealthzHandler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"status":"ok"}`))
}

// ReadyzHandler answers 200 when ready, else 503 with the failing checks.
func (r *Readiness) ReadyzHandler(w http.ResponseWriter, req *http.Request) {
	failed := r.Ready(req.Context())
	w.Header().Set("Content-Type", "application/json")
	if len(failed) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]any{"status": "unavailable", "failed": failed})
		return
	}
	_, _ = w.Write([]byte(`{"status":"ready"}`))
}

// Handler returns the mux of the debug port.
func Handler(r *Readiness, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", HealthzHandler)
	mux.HandleFunc("GET /readyz", r.ReadyzHandler)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// NewServer returns an http.Server for the debug port at addr. It
// registers the gauge communications_service_ready in reg: 1 when /readyz would answer 200
// (every check passes and the service is not shutting down), else 0; each
// scrape runs the checks.
func NewServer(addr string, r *Readiness, reg *prometheus.Registry) *http.Server {
	ready := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "communications_service_ready",
		Help: "1 when the service is ready (its dependencies answer and it is not shutting down), else 0.",
	}, func() float64 {
		if len(r.Ready(context.Background())) > 0 {
			return 0
		}
		return 1
	})
	// The only failure is a second server on the same registry, whose
	// gauge the first one's already reports.
	_ = reg.Register(ready)
	return &http.Server{Addr: addr, Handler: Handler(r, reg), ReadHeaderTimeout: 5 * time.Second}
}

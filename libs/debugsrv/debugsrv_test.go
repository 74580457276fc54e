package debugsrv

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestReadyGauge: communications_service_ready follows the checks and the drain, and
// /metrics serves it.
func TestReadyGauge(t *testing.T) {
	t.Parallel()
	var failing atomic.Bool
	r := NewReadiness(map[string]Check{"db": func(context.Context) error {
		if failing.Load() {
			return errors.New("down")
		}
		return nil
	}})
	reg := prometheus.NewRegistry()
	srv := NewServer("127.0.0.1:0", r, reg)
	NewServer("127.0.0.1:0", r, reg) // a second server on the registry is fine
	ts := httptest.NewServer(srv.Handler)
	t.Cleanup(ts.Close)
	scrape := func() string {
		t.Helper()
		resp, err := http.Get(ts.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if strings.HasPrefix(line, "communications_service_ready ") {
				return strings.TrimPrefix(line, "communications_service_ready ")
			}
		}
		t.Fatalf("no communications_service_ready in /metrics:\n%s", b)
		return ""
	}
	for _, step := range []struct {
		name string
		do   func()
		want string
	}{
		{"ready", func() {}, "1"},
		{"a check fails", func() { failing.Store(true) }, "0"},
		{"the check passes again", func() { failing.Store(false) }, "1"},
		{"draining", r.StartDrain, "0"},
	} {
		step.do()
		if got := scrape(); got != step.want {
			t.Errorf("%s: communications_service_ready %s, want %s", step.name, got, step.want)
		}
	}
}

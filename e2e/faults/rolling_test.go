package faults

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/communications/communications/libs/testenv"
)

// TestFaultGatewayRollingRestart: a rolling restart of both gateways while
// 20 clients send, each replica stopped with SIGTERM as Kubernetes stops a
// pod, then started again before the next one goes. A terminated gateway
// answers 503 on /readyz at once, while it still holds websockets (it closes
// them a few at a time); it exits cleanly; its clients move to the other
// replica and resume; nothing acknowledged is lost, duplicated or out of
// order, and every client sees the chat's whole sequence.
func TestFaultGatewayRollingRestart(t *testing.T) {
	sc := newScenario(t, stackOptions{env: map[string]string{
		// A slow drain (2 websockets every 400 ms) keeps the terminated
		// gateway running with websockets open well after its readiness
		// has failed, so the order of the two is what the test sees.
		"GATEWAY_DRAIN_BATCH": "2", "GATEWAY_DRAIN_INTERVAL": "400ms",
	}}, 20, 50*time.Millisecond)
	sc.waitAcked(100, "before the restart")
	gateways := []string{"gateway-1", "gateway-2"}
	for i, name := range gateways {
		victims := sc.onGateway(i)
		if len(victims) == 0 {
			t.Fatalf("no client on %s", name)
		}
		connects := map[*chatClient]int{}
		for _, c := range victims {
			c.mu.Lock()
			connects[c] = c.connects
			c.mu.Unlock()
		}
		svc := sc.s.services[name]
		readyz := "http://" + svc.debugAddr + "/readyz"
		if code := statusOf(readyz); code != http.StatusOK {
			t.Fatalf("%s /readyz = %d before SIGTERM, want 200", name, code)
		}

		stopped := make(chan error, 1)
		go func() { stopped <- svc.proc.Stop(20 * time.Second) }() // SIGTERM
		t.Logf("SIGTERM to %s with %d of the clients on it", name, len(victims))

		var code int
		testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
			code = statusOf(readyz)
			return code == http.StatusServiceUnavailable
		}, func() string { return fmt.Sprintf("%s /readyz 503 after SIGTERM (last: %d)", name, code) })
		// Readiness failed before the drain was over: the gateway still
		// holds websockets (its own count), and it is still running.
		if open := sc.s.metric(name, "gateway_connections"); open < 1 {
			t.Errorf("%s: readiness failed only after its websockets were gone (gateway_connections %v)", name, open)
		}

		testenv.EventuallyDescribe(t, 60*time.Second, func() bool {
			for _, c := range victims {
				c.mu.Lock()
				moved := c.gateway != i && c.connects > connects[c]
				c.mu.Unlock()
				if !moved {
					return false
				}
			}
			return true
		}, func() string {
			return fmt.Sprintf("the %d clients of %s reconnected to the other gateway (still on it: %d)", len(victims), name, len(sc.onGateway(i)))
		})

		select {
		case err := <-stopped:
			if err != nil {
				t.Fatalf("%s did not stop on SIGTERM: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s still running 30 s after SIGTERM", name)
		}
		if err := svc.proc.Err(); err != nil {
			t.Errorf("%s exited with %v after SIGTERM, want status 0", name, err)
		}
		sc.waitAcked(50, "after "+name+" stopped")
		sc.s.start(name) // the new replica; waits until it is ready
		sc.waitAcked(50, "after "+name+" came back")
	}
	sc.finish()
}

// statusOf returns the HTTP status of a GET of u, or 0 when it fails.
func statusOf(u string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

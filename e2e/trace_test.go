package e2e

import (
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

// TestOneSendIsOneTrace: the spans of one message send, from the gateway's
// websocket handler through the chat service and the JetStream stream to
// the history writer and the fanout at the receiving gateway, share one
// trace id, carried in NATS headers and the fanout envelope.
func TestOneSendIsOneTrace(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	bob := signUp(t, s.gateways[1], "bob")
	a := alice.dial()
	b := bob.dial()

	a.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "t1", ChatID: generalChat, ClientMsgID: "traced", Text: "follow me"})
	b.waitEvent(isMessage("traced"), "traced message at bob")

	var root trace.SpanContext
	testenv.Eventually(t, 10*time.Second, func() bool {
		for _, sp := range s.spans.GetSpans() {
			if sp.Name == "ws send" {
				root = sp.SpanContext
				return true
			}
		}
		return false
	}, "ws send span")

	// Every service must have spans in the trace; the receiving side's
	// fanout span ends last, so poll until all are there.
	want := map[string]bool{"gateway": true, "chat": true, "history": true}
	var byService map[string][]string
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
		byService = spansOfTrace(s.spans.GetSpans(), root.TraceID())
		for svc := range want {
			if len(byService[svc]) == 0 {
				return false
			}
		}
		return contains(byService["gateway"], "fanout deliver")
	}, func() string {
		return fmt.Sprintf("spans of every service in trace %s; have %v", root.TraceID(), byService)
	})
	t.Logf("trace %s: %v", root.TraceID(), byService)
}

func spansOfTrace(spans tracetest.SpanStubs, id trace.TraceID) map[string][]string {
	out := map[string][]string{}
	for _, sp := range spans {
		if sp.SpanContext.TraceID() != id {
			continue
		}
		svc := ""
		for _, kv := range sp.Resource.Attributes() {
			if kv.Key == semconv.ServiceNameKey {
				svc = kv.Value.AsString()
			}
		}
		out[svc] = append(out[svc], sp.Name)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

package authevents_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/auth/internal/authevents"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestSessionRevoked(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	pubConn, err := natsbus.Connect(ns.ClientURL(), "auth-events-test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pubConn.Close)
	subConn, err := natsbus.Connect(ns.ClientURL(), "gateway-test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(subConn.Close)
	sub, err := subConn.SubscribeSync(subj.AuthSessionRevoked())
	if err != nil {
		t.Fatal(err)
	}
	if err := subConn.Flush(); err != nil {
		t.Fatal(err)
	}

	// A span context as the logout handler's would carry.
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
	})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	id := strings.Repeat("ab", 32)
	if err := authevents.New(pubConn, subj).SessionRevoked(ctx, id, 42); err != nil {
		t.Fatal(err)
	}

	msg, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no event on %s: %v", subj.AuthSessionRevoked(), err)
	}
	var got busapi.SessionRevoked
	if err := json.Unmarshal(msg.Data, &got); err != nil {
		t.Fatalf("event %q: %v", msg.Data, err)
	}
	if diff := cmp.Diff(busapi.SessionRevoked{SessionID: id, UserID: 42}, got); diff != "" {
		t.Errorf("event (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(`{"session_id":"`+id+`","user_id":42}`, string(msg.Data)); diff != "" {
		t.Errorf("payload (-want +got):\n%s", diff)
	}
	gotSC := trace.SpanContextFromContext(natsbus.Extract(context.Background(), msg))
	if gotSC.TraceID() != sc.TraceID() || gotSC.SpanID() != sc.SpanID() {
		t.Errorf("trace context in headers %v: trace %s span %s, want trace %s span %s",
			msg.Header, gotSC.TraceID(), gotSC.SpanID(), sc.TraceID(), sc.SpanID())
	}
}

// TestSessionRevokedClosed checks that a publish on a closed connection is
// reported.
func TestSessionRevokedClosed(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	nc, err := natsbus.Connect(ns.ClientURL(), "auth-events-test", slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if err := authevents.New(nc, subj).SessionRevoked(context.Background(), "ab", 1); err == nil {
		t.Error("SessionRevoked on a closed connection succeeded")
	}
}

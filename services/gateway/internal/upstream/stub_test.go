package upstream

import (
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
)

// natsStub connects to the test's real NATS server and returns the
// connection, a natsbus server on it for a test's stand-in of another
// service, the subjects, and a Client of this package on the same
// connection.
func natsStub(t *testing.T) (*nats.Conn, *natsbus.Server, subjects.Subjects, *Client) {
	t.Helper()
	nc := testenv.NATSConn(t)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	srv := natsbus.NewServer(nc, noop.NewTracerProvider(), telemetry.NewLogger(io.Discard, 0), 5*time.Second)
	return nc, srv, subj, New(natsbus.NewClient(nc, noop.NewTracerProvider()), subj, 5*time.Second)
}

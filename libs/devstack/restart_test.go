package devstack

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// A stopped Redis starts again on the same port.
func TestRedisStartsAgainOnItsPort(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rd, err := StartRedis(ctx, t.TempDir(), RedisOptions{Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Stop() })
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", rd.Port), MaxRetries: -1})
	defer c.Close()
	if err := rd.Start(ctx); err == nil {
		t.Fatal("Start of a running server succeeded")
	}
	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	if rd.Running() {
		t.Fatal("running after Stop")
	}
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("ping answered while stopped")
	}
	if err := rd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("ping after the restart: %v", err)
	}
}

// A killed nats-server starts again on the same port with its JetStream
// store: a stream created before is still there.
func TestNATSStartsAgainWithItsStore(t *testing.T) {
	t.Parallel()
	bin := os.Getenv("COMMS_TEST_NATS_SERVER") // testenv.EnvNATSServer (testenv imports this package)
	if bin == "" {
		var err error
		if bin, err = lookBin("nats-server", "../../.state/bin/nats-server"); err != nil {
			t.Skip("nats-server not found: run the test command, which installs it")
		}
	}
	ctx := context.Background()
	n, err := StartNATS(ctx, t.TempDir(), NATSOptions{Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop() })
	nc, err := nats.Connect(n.URL())
	if err != nil {
		t.Fatal(err)
	}
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: "KEPT", Subjects: []string{"kept"}, Storage: nats.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish("kept", []byte("x")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	n.Kill()
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	nc, err = nats.Connect(n.URL(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err = nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	info, err := js.StreamInfo("KEPT")
	if err != nil {
		t.Fatalf("stream after the restart: %v", err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages after the restart, want 1", info.State.Msgs)
	}
}

package ws

import (
	"context"
	"encoding/json"
	"io"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
)

// changeUpstream records change requests and answers them: an edit is a
// stored retry (duplicate with its sequence), a delete is refused.
type changeUpstream struct {
	noUpstream
	mu   sync.Mutex
	reqs []busapi.ChangeRequest
}

func (u *changeUpstream) Change(_ context.Context, req busapi.ChangeRequest) (busapi.SendResult, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.reqs = append(u.reqs, req)
	if req.Kind == protocol.KindDelete {
		return busapi.SendResult{}, busapi.Errorf(protocol.CodeNotSender, "only its sender can delete a message")
	}
	return busapi.SendResult{Duplicate: true, Seq: 41}, nil
}

// TestChangeEvents: edit and delete events go to the chat service with the
// session's user as sender, never one named by the client, and are answered
// with an ack carrying the sequence, or an error with the service's code.
func TestChangeEvents(t *testing.T) {
	t.Parallel()
	up := &changeUpstream{}
	s := NewServer(Config{SendQueue: 8}, up, &fakeHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	c := &Conn{srv: s, user: busapi.User{ID: 7, Username: "ann"}, closed: make(chan struct{}),
		positions: map[int64]*chatPosition{}}
	c.start([]byte("hello"))
	c.handle(context.Background(), []byte(`{"type":"edit","id":"r1","chat_id":3,"seq":40,"client_msg_id":"e-1","text":"new"}`))
	c.handle(context.Background(), []byte(`{"type":"delete","id":"r2","chat_id":3,"seq":12,"client_msg_id":"d-1"}`))

	want := []busapi.ChangeRequest{
		{ChatID: 3, SenderID: 7, Sender: "ann", Kind: protocol.KindEdit, TargetSeq: 40, ClientMsgID: "e-1", Text: "new"},
		{ChatID: 3, SenderID: 7, Sender: "ann", Kind: protocol.KindDelete, TargetSeq: 12, ClientMsgID: "d-1"},
	}
	if diff := cmp.Diff(want, up.reqs); diff != "" {
		t.Errorf("change requests (-want +got):\n%s", diff)
	}
	got := queued(c)
	if len(got) != 3 {
		t.Fatalf("queued %q, want hello and two answers", got)
	}
	var ack protocol.Ack
	if err := json.Unmarshal([]byte(got[1]), &ack); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(protocol.Ack{Type: protocol.TypeAck, ID: "r1", ChatID: 3, ClientMsgID: "e-1", Duplicate: true, Seq: 41}, ack); diff != "" {
		t.Errorf("edit answer (-want +got):\n%s", diff)
	}
	var e protocol.Error
	if err := json.Unmarshal([]byte(got[2]), &e); err != nil {
		t.Fatal(err)
	}
	if e.Type != protocol.TypeError || e.ID != "r2" || e.Code != protocol.CodeNotSender || e.Retryable {
		t.Errorf("delete answer = %+v, want error not_sender for r2", e)
	}
}

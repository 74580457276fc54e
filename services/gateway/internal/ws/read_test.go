package ws

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
)

// readUpstream has the position of chat 4 at 5: reads up to 9 move it,
// reads beyond 9 are refused.
type readUpstream struct{ noUpstream }

func (readUpstream) Read(_ context.Context, req busapi.ReadRequest) (busapi.ReadResult, error) {
	switch {
	case req.Seq > 9:
		return busapi.ReadResult{}, busapi.Errorf(protocol.CodeInvalidInput, "seq is beyond the newest message")
	case req.Seq <= 5:
		return busapi.ReadResult{ChatID: req.ChatID, Seq: 5, Unread: 4}, nil
	}
	return busapi.ReadResult{ChatID: req.ChatID, Seq: req.Seq, Unread: int(9 - req.Seq), Moved: true}, nil
}

func TestHandleRead(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		seq  int64
		want []string
	}{
		// The chat service's event brings read_position to every
		// connection; the reader gets nothing more.
		{name: "moved", seq: 7},
		{name: "behind the stored position", seq: 2,
			want: []string{`{"type":"read_position","chat_id":4,"seq":5,"unread":4}`}},
		{name: "refused", seq: 10,
			want: []string{`{"type":"error","id":"r1","code":"invalid_input","message":"seq is beyond the newest message","retryable":false}`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := newTestConn(t, 8)
			c.srv.up = readUpstream{}
			c.start([]byte("hello"))
			queued(c)
			c.handleRead(context.Background(), protocol.ClientEvent{Type: protocol.TypeRead, ID: "r1", ChatID: 4, Seq: tc.seq})
			if diff := cmp.Diff(tc.want, queued(c)); diff != "" {
				t.Errorf("queued (-want +got):\n%s", diff)
			}
		})
	}
}

func TestApplyReadEvent(t *testing.T) {
	t.Parallel()
	phone, _ := newTestConn(t, 8)
	s := phone.srv
	laptop := &Conn{srv: s, user: busapi.User{ID: 7}, closed: make(chan struct{}), positions: map[int64]*chatPosition{}}
	other := &Conn{srv: s, user: busapi.User{ID: 8}, closed: make(chan struct{}), positions: map[int64]*chatPosition{}}
	for _, c := range []*Conn{phone, laptop, other} {
		if !s.add(c) {
			t.Fatal("not added")
		}
		c.start([]byte("hello"))
		queued(c)
	}
	s.ApplyReadEvent(context.Background(), busapi.ReadEvent{UserID: 7, ChatID: 4, Seq: 41, Unread: 2})
	want := []string{`{"type":"read_position","chat_id":4,"seq":41,"unread":2}`}
	for name, c := range map[string]*Conn{"phone": phone, "laptop": laptop} {
		if diff := cmp.Diff(want, queued(c)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	if got := queued(other); len(got) != 0 {
		t.Errorf("another user got %v", got)
	}
}

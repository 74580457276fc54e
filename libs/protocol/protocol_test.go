package protocol

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSplitFrame(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		frame   string
		want    []string
		wantErr error
	}{
		{name: "one", frame: `{"type":"ping"}`, want: []string{`{"type":"ping"}`}},
		{name: "several", frame: "{\"a\":1}\n{\"b\":2}\n", want: []string{`{"a":1}`, `{"b":2}`}},
		{name: "blank lines and CRLF", frame: "\r\n{\"a\":1}\r\n\n{\"b\":2}", want: []string{`{"a":1}`, `{"b":2}`}},
		{name: "empty", frame: "  \n ", wantErr: ErrEmptyFrame},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := SplitFrame([]byte(tc.frame))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			var gotS []string
			for _, g := range got {
				gotS = append(gotS, string(g))
			}
			if diff := cmp.Diff(tc.want, gotS); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeClientEvent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		raw     string
		want    ClientEvent
		wantErr string
	}{
		{name: "send", raw: `{"type":"send","id":"r","chat_id":3,"client_msg_id":"c","text":"hi"}`,
			want: ClientEvent{Type: TypeSend, ID: "r", ChatID: 3, ClientMsgID: "c", Text: "hi"}},
		{name: "ping", raw: `{"type":"ping"}`, want: ClientEvent{Type: TypePing}},
		{name: "unknown field", raw: `{"type":"send","extra":1}`, wantErr: "unknown field"},
		{name: "no type", raw: `{"id":"x"}`, wantErr: `no "type"`},
		{name: "unknown type", raw: `{"type":"dance"}`, wantErr: "unknown event type"},
		{name: "not json", raw: `hello`, wantErr: "decode event"},
		{name: "wrong field type", raw: `{"type":"send","chat_id":"one"}`, wantErr: "decode event"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := DecodeClientEvent([]byte(tc.raw))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("event (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidClientMsgID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id   string
		want bool
	}{
		{"a", true},
		{"550e8400-e29b-41d4-a716-446655440000", true},
		{strings.Repeat("x", MaxClientMsgIDLen), true},
		{strings.Repeat("x", MaxClientMsgIDLen+1), false},
		{"", false},
		{"has space", false},
		{"tab\t", false},
		{"é", false},
	}
	for _, tc := range tests {
		if got := ValidClientMsgID(tc.id); got != tc.want {
			t.Errorf("ValidClientMsgID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

func TestCloseCodeRanges(t *testing.T) {
	t.Parallel()
	for _, c := range []int{CloseGoingAway, CloseSlowConsumer, CloseServerError, CloseRateLimited} {
		if !CloseShouldReconnect(c) {
			t.Errorf("close code %d should tell the client to reconnect", c)
		}
	}
	for _, c := range []int{CloseUnauthorized, CloseProtocolError, 1000, 1009} {
		if CloseShouldReconnect(c) {
			t.Errorf("close code %d should not be in the reconnect range", c)
		}
	}
	for _, c := range []Code{CodeUnavailable, CodeInternal, CodeRateLimited} {
		if !c.Retryable() {
			t.Errorf("%s should be retryable", c)
		}
	}
	if CodeNotAMember.Retryable() {
		t.Error("not_a_member should not be retryable")
	}
}

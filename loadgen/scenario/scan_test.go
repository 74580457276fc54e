package scenario

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestScanEvent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		line string
		ok   bool
	}{
		{"message", `{"type":"message","chat_id":12,"seq":345,"sender_id":7,"sender":"lg_u000001","client_msg_id":"lg-x-17","text":"lg:1764021234567890123","sent_at":"2026-11-24T18:00:00Z"}`, true},
		{"ack", `{"type":"ack","id":"r1","chat_id":4,"seq":9,"client_msg_id":"c-1"}`, true},
		{"error", `{"type":"error","id":"r9","code":"rate_limited","message":"too many requests; slow down","retryable":true}`, true},
		{"nested and escapes", `{ "type" : "resumed", "positions" : {"1":45,"4":[7,{"x":"}"}]}, "text":"a \"quoted\" \\ text", "seq": -3 }`, true},
		{"empty object", `{}`, true},
		{"not an object", `[1,2]`, false},
		{"cut short", `{"type":"message","chat_id":12`, false},
		{"unterminated string", `{"type":"mess`, false},
		{"missing colon", `{"type" "message"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got inbound
			if ok := scanEvent([]byte(tt.line), &got); ok != tt.ok {
				t.Fatalf("scanEvent ok = %v, want %v", ok, tt.ok)
			}
			if !tt.ok {
				return
			}
			var want inbound
			if err := json.Unmarshal([]byte(tt.line), &want); err != nil {
				t.Fatal(err)
			}
			norm := func(b json.RawMessage) string { return string(b) }
			type flat struct {
				Type, Text, Code, ClientMsgID string
				ChatID, Seq                   int64
			}
			g := flat{norm(got.Type), norm(got.Text), norm(got.Code), norm(got.ClientMsgID), got.ChatID, got.Seq}
			w := flat{norm(want.Type), norm(want.Text), norm(want.Code), norm(want.ClientMsgID), want.ChatID, want.Seq}
			if diff := cmp.Diff(w, g); diff != "" {
				t.Errorf("scanEvent differs from encoding/json (-want +got):\n%s", diff)
			}
		})
	}
}

func BenchmarkScanEvent(b *testing.B) {
	line := []byte(`{"type":"message","chat_id":12,"seq":345,"sender_id":7,"sender":"lg_u000001","client_msg_id":"lg-x-17","text":"lg:1764021234567890123","sent_at":"2026-11-24T18:00:00Z"}`)
	var ev inbound
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			scanEvent(line, &ev)
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = json.Unmarshal(line, &ev)
		}
	})
}

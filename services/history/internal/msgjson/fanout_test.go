package msgjson_test

import (
	"encoding/json"
	"testing"

	"github.com/communications/communications/libs/fanout"
	"github.com/communications/communications/services/history/internal/msgjson"
)

// TestAppendEnvelopeMatchesEncodingJSON: every shape of envelope (flags
// set or not, no trace, an empty one, several keys in any order, awkward
// strings in keys and values) around every shape of message encodes as
// json.Marshal encodes the fanout.Envelope.
func TestAppendEnvelopeMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	traces := []map[string]string{
		nil,
		{},
		{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{"tracestate": "a=1,b=2", "traceparent": "00-x-y-01", "baggage": "k=v"},
	}
	for _, s := range awkward {
		traces = append(traces, map[string]string{s: s, "z" + s: "v"})
	}
	var buf []byte
	for i := range 4 * len(awkward) {
		ev := message(i)
		env := fanout.Envelope{
			ChatID: ev.ChatID, Seq: ev.Seq, SenderID: ev.SenderID,
			Duplicate: i%2 == 1, Ephemeral: i%5 == 3, AcceptedAt: int64(i%3) * 1_700_000_000_123_456,
			Trace: traces[i%len(traces)],
		}
		evJSON, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		env.Event = evJSON
		want, err := json.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		buf, err = msgjson.AppendEnvelope(buf[:0], &env, &ev)
		if err != nil {
			t.Fatalf("envelope %d: %v", i, err)
		}
		if string(buf) != string(want) {
			t.Errorf("envelope %d:\n got %s\nwant %s", i, buf, want)
		}
	}
}

func BenchmarkAppendEnvelope(b *testing.B) {
	ev := message(1)
	env := fanout.Envelope{ChatID: ev.ChatID, Seq: ev.Seq, SenderID: ev.SenderID, AcceptedAt: 1_700_000_000_123_456,
		Trace: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = msgjson.AppendEnvelope(buf[:0], &env, &ev)
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			e := env
			e.Event, _ = json.Marshal(ev)
			_, _ = json.Marshal(e)
		}
	})
}

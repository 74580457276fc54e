package msgjson_test

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/services/history/internal/history"
	"github.com/communications/communications/services/history/internal/msgjson"
)

// awkward holds strings whose escaping differs between encoders: quotes,
// backslashes, every control character, HTML-sensitive characters, line
// and paragraph separators, invalid UTF-8, and multi-byte runes.
var awkward = []string{
	"",
	"hello",
	`say "hi" \ back\slash /`,
	"\x00\x01\x02\x07\b\t\n\v\f\r\x0e\x1b\x1f\x7f",
	"<script>alert('x') && 1</script>",
	"line\u2028separator\u2029paragraph",
	"bad \xff\xfe utf8 \xc3\x28 \xe2\x82 end\xe2",
	"héllo wörld 日本語 🙂 \U0010ffff",
	"\ufffd already a replacement",
	strings.Repeat("long text with a tab\t", 200),
}

// entry returns a stored entry of every shape: a message, an edit, a
// deletion, a deleted and edited message, with times at the edges of what
// encoding/json accepts and in other time zones.
func entry(i int) history.Message {
	s := awkward[i%len(awkward)]
	m := history.Message{
		ChatID: int64(i) + 1, Seq: int64(i)*1000003 + 1, Kind: history.KindMessage,
		SenderID: -int64(i), Sender: "user_" + s, ClientMsgID: s + "-id", Text: s,
		SentAt: time.Date(2026, 11, 25, 1, 2, 3, i*123456789%1000000000, time.UTC),
	}
	switch i % 4 {
	case 1:
		m.Kind, m.TargetSeq = history.KindEdit, int64(i)
		m.EditedAt = m.SentAt.Add(time.Duration(i) * time.Millisecond).In(time.FixedZone("x", 5*3600+30*60))
	case 2:
		m.Kind, m.TargetSeq, m.Deleted = history.KindDelete, 1<<62, true
	case 3:
		m.Deleted = true
		m.EditedAt = time.Date(1, 1, 1, 0, 0, 0, 1, time.FixedZone("y", -(23*3600+59*60)))
		m.SentAt = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.Local)
	}
	return m
}

func message(i int) protocol.Message { return entry(i).Event() }

func TestAppendMessageMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	for i := range 4 * len(awkward) {
		m := message(i)
		want, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := msgjson.AppendMessage([]byte("prefix"), &m)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if diff := cmp.Diff(string(want), strings.TrimPrefix(string(got), "prefix")); diff != "" || !strings.HasPrefix(string(got), "prefix") {
			t.Errorf("message %d: encoding differs from encoding/json (-want +got):\n%s", i, diff)
		}
	}
}

func TestAppendPageMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 2, 50, 100} {
		entries := make([]history.Message, n)
		page := busapi.HistoryPage{Messages: make([]protocol.Message, n)}
		for i := range entries {
			entries[i] = entry(i)
			page.Messages[i] = entries[i].Event()
		}
		want, err := json.Marshal(page)
		if err != nil {
			t.Fatal(err)
		}
		got, err := msgjson.AppendPage([]byte("prefix"), entries)
		if err != nil {
			t.Fatalf("page of %d: %v", n, err)
		}
		if diff := cmp.Diff("prefix"+string(want), string(got)); diff != "" {
			t.Errorf("page of %d: encoding differs from encoding/json (-want +got):\n%s", n, diff)
		}
	}
}

func TestAppendMessageRandomStrings(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	// Bytes biased towards the ones that need escaping, and the leading
	// bytes of multi-byte and invalid sequences.
	alphabet := []byte("ab\"\\<>&\x00\x1f\n\t\x7f\x80\xbf\xc2\xe2\x80\xa8\xa9\xf0\x9f\x99\x82\xff")
	for i := range 5000 {
		b := make([]byte, rng.IntN(24))
		for j := range b {
			if rng.IntN(4) == 0 {
				b[j] = byte(rng.IntN(256))
			} else {
				b[j] = alphabet[rng.IntN(len(alphabet))]
			}
		}
		m := message(i)
		m.Text = string(b)
		want, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := msgjson.AppendMessage(nil, &m)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("text %q (valid UTF-8: %v): got\n%s\nwant\n%s", b, utf8.Valid(b), got, want)
		}
	}
}

func TestAppendMessageRefusesWhatEncodingJSONRefuses(t *testing.T) {
	t.Parallel()
	for name, at := range map[string]time.Time{
		"year 10000":   time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		"year -1":      time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		"offset +24h":  time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("z", 24*3600)),
		"offset -25h":  time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("z", -25*3600)),
		"edited 10000": {},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := message(0)
			if name == "edited 10000" {
				bad := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
				m.EditedAt = &bad
			} else {
				m.SentAt = at
			}
			_, wantErr := json.Marshal(m)
			_, err := msgjson.AppendMessage(nil, &m)
			if wantErr == nil || err == nil {
				t.Fatalf("errors: encoding/json %v, AppendMessage %v; want both", wantErr, err)
			}
			if !strings.Contains(wantErr.Error(), err.Error()) {
				t.Errorf("error %q, want the one of encoding/json: %q", err, wantErr)
			}
		})
	}
}

func FuzzAppendMessage(f *testing.F) {
	for i, s := range awkward {
		f.Add(s, int64(i), int64(i)*1e15)
	}
	f.Fuzz(func(t *testing.T, text string, seq, unixNano int64) {
		m := message(int(seq & 3))
		m.Text, m.Sender, m.Seq = text, text, seq
		m.SentAt = time.Unix(0, unixNano).UTC()
		want, wantErr := json.Marshal(m)
		got, err := msgjson.AppendMessage(nil, &m)
		if (wantErr == nil) != (err == nil) {
			t.Fatalf("errors: encoding/json %v, AppendMessage %v", wantErr, err)
		}
		if err == nil && string(got) != string(want) {
			t.Fatalf("got\n%s\nwant\n%s", got, want)
		}
	})
}

func BenchmarkAppendPage(b *testing.B) {
	entries := make([]history.Message, 50)
	page := busapi.HistoryPage{Messages: make([]protocol.Message, len(entries))}
	for i := range entries {
		entries[i] = history.Message{
			ChatID: 802, Seq: int64(i) + 900000, Kind: history.KindMessage, SenderID: 42, Sender: "lg_u000042",
			ClientMsgID: "lg-1-123456", Text: "lg:1764021234567890123 a message of a typical length in a chat",
			SentAt: time.Date(2026, 11, 25, 1, 2, 3, 456789000, time.UTC),
		}
		page.Messages[i] = entries[i].Event()
	}
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(page); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("msgjson", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			var err error
			if buf, err = msgjson.AppendPage(buf[:0], entries); err != nil {
				b.Fatal(err)
			}
		}
	})
}

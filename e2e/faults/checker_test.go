package faults

import (
	"fmt"
	"strings"
	"testing"
)

// good builds a consistent history: n messages of two senders alternating
// in chat 7, each acknowledged, stored with seq 1..n and seen by the two
// senders (users 1 and 2).
func good(n int) ([]Send, []Row, []View) {
	var sends []Send
	var rows []Row
	for i := range n {
		sender := int64(1 + i%2)
		id := fmt.Sprintf("c%d-%d", sender, i/2)
		sends = append(sends, Send{ChatID: 7, SenderID: sender, ClientMsgID: id, Index: i / 2, Outcome: Acked, Attempts: 1, Text: "t " + id})
		rows = append(rows, Row{ChatID: 7, Seq: int64(i + 1), SenderID: sender, ClientMsgID: id, Text: "t " + id})
	}
	views := []View{
		{Member: "a", UserID: 1, ChatID: 7, Rows: append([]Row(nil), rows...)},
		{Member: "b", UserID: 2, ChatID: 7, Rows: append([]Row(nil), rows...)},
	}
	return sends, rows, views
}

func TestCheckFindsEachDefect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(sends []Send, rows []Row, views []View) ([]Send, []Row, []View)
		want   string // the kind of finding expected; "" for none
	}{
		{name: "consistent", want: "", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) { return s, r, v }},
		{name: "refused and unknown sends that were not stored are fine", want: "", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			s = append(s, Send{ChatID: 7, SenderID: 1, ClientMsgID: "x", Index: 99, Outcome: Refused, Code: "unavailable"},
				Send{ChatID: 7, SenderID: 2, ClientMsgID: "y", Index: 99, Outcome: Unknown})
			return s, r, v
		}},
		{name: "the sender's duplicate copy of its own message is accepted", want: "", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			// Seq 3 is user 1's (a's) message, published again for a's retry.
			v[0].Rows = append(v[0].Rows[:5:5], append([]Row{r[2]}, v[0].Rows[5:]...)...)
			return s, r, v
		}},
		{name: "an ack with the stored seq is fine", want: "", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			s[2].AckSeqs = []int64{r[2].Seq}
			return s, r, v
		}},
		{name: "another member received a message twice", want: "view duplicated", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			// Seq 3 is user 1's message; b (user 2) must see it once.
			v[1].Rows = append(v[1].Rows, r[2])
			return s, r, v
		}},
		{name: "a member of unknown user id received a message twice", want: "view duplicated", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			v[0].UserID = 0
			v[0].Rows = append(v[0].Rows, r[2])
			return s, r, v
		}},
		{name: "an ack carried another seq", want: "ack seq differs", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			s[2].AckSeqs = []int64{r[2].Seq, r[2].Seq + 1}
			return s, r, v
		}},
		{name: "stored text differs from the text sent", want: "text differs", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			s[4].Text = "something else"
			return s, r, v
		}},
		{name: "acknowledged but not stored", want: "lost", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			s = append(s, Send{ChatID: 7, SenderID: 1, ClientMsgID: "gone", Index: 100, Outcome: Acked})
			return s, r, v
		}},
		{name: "refused without saying why", want: "refused without a code", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			s = append(s, Send{ChatID: 7, SenderID: 1, ClientMsgID: "x", Index: 99, Outcome: Refused})
			return s, r, v
		}},
		{name: "stored twice", want: "duplicated", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			dup := r[2]
			dup.Seq = int64(len(r) + 1)
			r = append(r, dup)
			for i := range v {
				v[i].Rows = append(v[i].Rows, dup)
			}
			return s, r, v
		}},
		{name: "a hole in the sequence", want: "not contiguous", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			r[len(r)-1].Seq++
			for i := range v {
				v[i].Rows[len(r)-1].Seq++
			}
			return s, r, v
		}},
		{name: "one sender's messages swapped", want: "out of sending order", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			// Sender 1's messages #1 and #2 sit at seq 3 and 5.
			r[2].ClientMsgID, r[4].ClientMsgID = r[4].ClientMsgID, r[2].ClientMsgID
			r[2].Text, r[4].Text = r[4].Text, r[2].Text
			for i := range v {
				v[i].Rows = append([]Row(nil), r...)
			}
			return s, r, v
		}},
		{name: "a member never got an acknowledged message", want: "view lost", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			v[1].Rows = v[1].Rows[:len(v[1].Rows)-1]
			return s, r, v
		}},
		{name: "a member got messages out of order", want: "view out of order", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			v[0].Rows[1], v[0].Rows[2] = v[0].Rows[2], v[0].Rows[1]
			return s, r, v
		}},
		{name: "a member saw other content than stored", want: "view differs", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			v[1].Rows[4].Text = "changed"
			return s, r, v
		}},
		{name: "a member saw a message never stored", want: "view differs", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			v[0].Rows = append(v[0].Rows, Row{ChatID: 7, Seq: int64(len(r) + 1), SenderID: 1, ClientMsgID: "ghost"})
			return s, r, v
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rep := Check(tc.mutate(good(10)))
			if tc.want == "" {
				if len(rep.Findings) > 0 {
					t.Fatalf("findings in a consistent history: %v", rep.Findings)
				}
				return
			}
			for _, f := range rep.Findings {
				if strings.HasPrefix(f, tc.want+":") {
					return
				}
			}
			t.Fatalf("want a %q finding, got %v", tc.want, rep.Findings)
		})
	}
}

func TestRecorderOutcomes(t *testing.T) {
	t.Parallel()
	r := NewRecorder()
	r.Attempt(1, 2, "a", 0, "text a")
	r.Acked(1, 2, "a", 0)
	r.Attempt(1, 2, "a", 0, "text a") // a retry after an ack stays acknowledged
	r.Acked(1, 2, "a", 1)             // with the original's seq
	r.Attempt(1, 2, "b", 1, "text b")
	r.Refused(1, 2, "b", "unavailable")
	r.Attempt(1, 2, "c", 2, "text c")
	sends := r.Sends()
	if got := sends[0].AckSeqs; len(got) != 1 || got[0] != 1 {
		t.Fatalf("ack seqs of a: %v, want [1]", got)
	}
	rep := Check(sends, []Row{{ChatID: 1, Seq: 1, SenderID: 2, ClientMsgID: "a", Text: "text a"}}, nil)
	c := rep.Counts
	if c.Sent != 3 || c.Acked != 1 || c.Refused != 1 || c.Unknown != 1 || c.Retried != 1 || c.Refusals["unavailable"] != 1 {
		t.Fatalf("counts %s", c)
	}
	if len(rep.Findings) != 0 {
		t.Fatalf("findings: %v", rep.Findings)
	}
}

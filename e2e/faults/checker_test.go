package faults

import (
	"fmt"
	"strings"
	"testing"
)

// good builds a consistent history: n messages of two senders alternating
// in chat 7, each acknowledged, stored with seq 1..n and seen by two members.
func good(n int) ([]Send, []Row, []View) {
	var sends []Send
	var rows []Row
	for i := range n {
		sender := int64(1 + i%2)
		id := fmt.Sprintf("c%d-%d", sender, i/2)
		sends = append(sends, Send{ChatID: 7, SenderID: sender, ClientMsgID: id, Index: i / 2, Outcome: Acked, Attempts: 1})
		rows = append(rows, Row{ChatID: 7, Seq: int64(i + 1), SenderID: sender, ClientMsgID: id, Text: "t " + id})
	}
	views := []View{
		{Member: "a", ChatID: 7, Rows: append([]Row(nil), rows...)},
		{Member: "b", ChatID: 7, Rows: append([]Row(nil), rows...)},
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
		{name: "a retried copy of a seen sequence is ignored", want: "", mutate: func(s []Send, r []Row, v []View) ([]Send, []Row, []View) {
			v[0].Rows = append(v[0].Rows, v[0].Rows[3])
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
	r.Attempt(1, 2, "a", 0)
	r.Acked(1, 2, "a")
	r.Attempt(1, 2, "a", 0) // a retry after an ack stays acknowledged
	r.Attempt(1, 2, "b", 1)
	r.Refused(1, 2, "b", "unavailable")
	r.Attempt(1, 2, "c", 2)
	rep := Check(r.Sends(), []Row{{ChatID: 1, Seq: 1, SenderID: 2, ClientMsgID: "a"}}, nil)
	c := rep.Counts
	if c.Sent != 3 || c.Acked != 1 || c.Refused != 1 || c.Unknown != 1 || c.Retried != 1 || c.Refusals["unavailable"] != 1 {
		t.Fatalf("counts %s", c)
	}
	if len(rep.Findings) != 0 {
		t.Fatalf("findings: %v", rep.Findings)
	}
}

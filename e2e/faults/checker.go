// Package faults holds the fault tests: the whole system runs as real
// processes (PostgreSQL, Redis, nats-server and every service, with two
// gateway, two chat and two history replicas), the tests kill or restart
// one of them while clients send, and a delivery checker then proves that
// nothing acknowledged was lost, stored twice or delivered out of order.
//
// This file is the checker; the tests are in the _test files.
package faults

import (
	"fmt"
	"sort"
	"sync"
)

// Outcome is what a client learned about one send.
type Outcome int

// Outcomes of a send.
const (
	// Unknown: the connection dropped (or the test ended) before an answer.
	Unknown Outcome = iota
	// Acked: the server acknowledged the message: it must be stored once
	// and reach every member.
	Acked
	// Refused: the server answered with an error event (its code in
	// Send.Code): the message may or may not be stored.
	Refused
)

func (o Outcome) String() string {
	switch o {
	case Acked:
		return "acknowledged"
	case Refused:
		return "refused"
	}
	return "unknown"
}

// Send is one message a client sent (with all its retries, which reuse
// its client message id).
type Send struct {
	ChatID      int64
	SenderID    int64
	ClientMsgID string
	// Index orders one sender's messages: the order in which they were
	// sent (a retry keeps its index).
	Index int
	// Outcome is the last answer: Acked once any attempt was acknowledged.
	Outcome Outcome
	// Code is the error code of the last refusal.
	Code string
	// Attempts counts the times the message was written to a socket.
	Attempts int
	// Text is the text sent (every retry sends the same).
	Text string
	// AckSeqs holds the sequence number of every ack that carried one (a
	// retry of a stored message is acknowledged with its original seq).
	AckSeqs []int64
}

// Row is one stored message: a row of PostgreSQL's messages table, or a
// message event as a member received it.
type Row struct {
	ChatID      int64
	Seq         int64
	SenderID    int64
	ClientMsgID string
	Text        string
}

// View is what one member's client received of a chat's messages, in the
// order of arrival over all its connections.
type View struct {
	Member string
	// UserID is the member's user id: only a message's sender may receive
	// it twice (see Check).
	UserID int64
	ChatID int64
	Rows   []Row
}

// Recorder records every send of a test's clients. It is safe for
// concurrent use.
type Recorder struct {
	mu    sync.Mutex
	sends map[string]*Send // by sender and client message id
	order []string
	// refusals counts every error answer, retries included.
	refusals int
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{sends: map[string]*Send{}} }

func sendKey(chatID, senderID int64, clientMsgID string) string {
	return fmt.Sprintf("%d/%d/%s", chatID, senderID, clientMsgID)
}

// Attempt records that a message with text was written to a socket (first
// time or retry), as unknown until an answer comes.
func (r *Recorder) Attempt(chatID, senderID int64, clientMsgID string, index int, text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := sendKey(chatID, senderID, clientMsgID)
	s, ok := r.sends[k]
	if !ok {
		s = &Send{ChatID: chatID, SenderID: senderID, ClientMsgID: clientMsgID, Index: index, Text: text}
		r.sends[k] = s
		r.order = append(r.order, k)
	}
	s.Attempts++
	if s.Outcome != Acked {
		s.Outcome = Unknown
	}
}

// Acked records an acknowledgement and the sequence number it carried (0:
// none).
func (r *Recorder) Acked(chatID, senderID int64, clientMsgID string, seq int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.sends[sendKey(chatID, senderID, clientMsgID)]; s != nil {
		s.Outcome = Acked
		if seq != 0 {
			s.AckSeqs = append(s.AckSeqs, seq)
		}
	}
}

// Refused records an error event answering the message.
func (r *Recorder) Refused(chatID, senderID int64, clientMsgID, code string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refusals++
	if s := r.sends[sendKey(chatID, senderID, clientMsgID)]; s != nil && s.Outcome != Acked {
		s.Outcome, s.Code = Refused, code
	}
}

// Count returns how many sends have outcome o now.
func (r *Recorder) Count(o Outcome) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.sends {
		if s.Outcome == o {
			n++
		}
	}
	return n
}

// Attempts returns how many times messages were written to a socket, over
// all sends and retries.
func (r *Recorder) Attempts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.sends {
		n += s.Attempts
	}
	return n
}

// Refusals returns how many error answers were recorded, over all sends
// and retries.
func (r *Recorder) Refusals() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refusals
}

// Sends returns a copy of every recorded send in the order first sent.
func (r *Recorder) Sends() []Send {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Send, 0, len(r.order))
	for _, k := range r.order {
		s := *r.sends[k]
		s.AckSeqs = append([]int64(nil), s.AckSeqs...)
		out = append(out, s)
	}
	return out
}

// Counts summarises a check.
type Counts struct {
	Sent, Acked, Refused, Unknown, Stored int
	// Retried counts the sends written more than once.
	Retried int
	// Refusals counts refused sends by error code.
	Refusals map[string]int
}

func (c Counts) String() string {
	return fmt.Sprintf("sent %d, acknowledged %d, refused %d %v, unknown %d, retried %d, stored %d",
		c.Sent, c.Acked, c.Refused, c.Refusals, c.Unknown, c.Retried, c.Stored)
}

// Report is the checker's result: the counts and every defect found.
type Report struct {
	Counts   Counts
	Findings []string
}

// maxFindingsPerKind keeps a report readable when a defect repeats.
const maxFindingsPerKind = 10

type findings struct {
	list  []string
	kinds map[string]int
}

func (f *findings) add(kind, format string, args ...any) {
	if f.kinds == nil {
		f.kinds = map[string]int{}
	}
	f.kinds[kind]++
	switch n := f.kinds[kind]; {
	case n <= maxFindingsPerKind:
		f.list = append(f.list, kind+": "+fmt.Sprintf(format, args...))
	case n == maxFindingsPerKind+1:
		f.list = append(f.list, kind+": (more left out)")
	}
}

// Check compares what the clients sent and received with what PostgreSQL
// stored. stored holds every row of the messages table of the chats
// concerned; views holds every member's view of each chat. It reports:
//
//   - lost: an acknowledged send missing from PostgreSQL;
//   - ack seq differs: an ack carried another sequence number than the one
//     PostgreSQL holds for its message;
//   - text differs: PostgreSQL holds another text than the one sent;
//   - refused without a code: an error answer that does not say why;
//   - duplicated: the same (chat, sender, client message id) stored twice;
//   - not contiguous: a chat's sequence numbers are not 1, 2, 3, ...;
//   - out of sending order: one sender's messages stored in another order
//     than sent;
//   - view: a member's view missing a stored message, receiving a message
//     out of sequence order, showing something other than PostgreSQL, or
//     receiving a sequence twice (view duplicated).
//
// A message stored before and published again (its sender retried it, or
// the stream redelivered it) is marked duplicate for the gateways, which
// deliver it to its sender's connections only; clients ignore a sequence
// they already have. The message event does not carry that mark, so the
// checker allows a repeat (identical to the first) only in the view of the
// message's sender; any other repeat is "view duplicated".
func Check(sends []Send, stored []Row, views []View) Report {
	var f findings
	c := Counts{Sent: len(sends), Stored: len(stored), Refusals: map[string]int{}}
	for _, s := range sends {
		switch s.Outcome {
		case Acked:
			c.Acked++
		case Refused:
			c.Refused++
			c.Refusals[s.Code]++
			if s.Code == "" {
				f.add("refused without a code", "chat %d sender %d client_msg_id %q", s.ChatID, s.SenderID, s.ClientMsgID)
			}
		default:
			c.Unknown++
		}
		if s.Attempts > 1 {
			c.Retried++
		}
	}

	byKey := map[string]Row{}
	byChat := map[int64][]Row{}
	for _, r := range stored {
		k := sendKey(r.ChatID, r.SenderID, r.ClientMsgID)
		if prev, dup := byKey[k]; dup {
			f.add("duplicated", "chat %d sender %d client_msg_id %q stored as seq %d and %d", r.ChatID, r.SenderID, r.ClientMsgID, prev.Seq, r.Seq)
		}
		byKey[k] = r
		byChat[r.ChatID] = append(byChat[r.ChatID], r)
	}

	for _, s := range sends {
		r, stored := byKey[sendKey(s.ChatID, s.SenderID, s.ClientMsgID)]
		if s.Outcome == Acked && !stored {
			f.add("lost", "chat %d sender %d client_msg_id %q acknowledged but not in PostgreSQL", s.ChatID, s.SenderID, s.ClientMsgID)
		}
		if !stored {
			continue
		}
		for _, seq := range s.AckSeqs {
			if seq != r.Seq {
				f.add("ack seq differs", "chat %d sender %d client_msg_id %q acknowledged with seq %d, stored as seq %d", s.ChatID, s.SenderID, s.ClientMsgID, seq, r.Seq)
			}
		}
		if s.Text != "" && s.Text != r.Text {
			f.add("text differs", "chat %d sender %d client_msg_id %q sent as %q, stored as %q", s.ChatID, s.SenderID, s.ClientMsgID, s.Text, r.Text)
		}
	}

	chats := make([]int64, 0, len(byChat))
	for id, rows := range byChat {
		chats = append(chats, id)
		sort.Slice(rows, func(i, j int) bool { return rows[i].Seq < rows[j].Seq })
	}
	sort.Slice(chats, func(i, j int) bool { return chats[i] < chats[j] })
	for _, id := range chats {
		for i, r := range byChat[id] {
			if r.Seq != int64(i+1) {
				f.add("not contiguous", "chat %d: position %d holds seq %d", id, i+1, r.Seq)
				break
			}
		}
	}

	// One sender's messages: stored sequence must follow sending order.
	index := map[string]int{}
	for _, s := range sends {
		index[sendKey(s.ChatID, s.SenderID, s.ClientMsgID)] = s.Index
	}
	for _, id := range chats {
		last := map[int64]Row{} // by sender: the previous stored message
		lastIdx := map[int64]int{}
		for _, r := range byChat[id] {
			idx, ok := index[sendKey(r.ChatID, r.SenderID, r.ClientMsgID)]
			if !ok {
				continue
			}
			if prev, seen := last[r.SenderID]; seen && idx < lastIdx[r.SenderID] {
				f.add("out of sending order", "chat %d sender %d: %q (sent as #%d) stored at seq %d after %q (sent as #%d) at seq %d",
					id, r.SenderID, r.ClientMsgID, idx, r.Seq, prev.ClientMsgID, lastIdx[r.SenderID], prev.Seq)
			}
			last[r.SenderID], lastIdx[r.SenderID] = r, idx
		}
	}

	for _, v := range views {
		want := byChat[v.ChatID]
		var got []Row
		seen := map[int64]Row{}
		for _, r := range v.Rows {
			if prev, ok := seen[r.Seq]; ok {
				switch {
				case prev != r:
					f.add("view differs", "%s chat %d seq %d received twice with different content: %+v then %+v", v.Member, v.ChatID, r.Seq, prev, r)
				case v.UserID == 0 || r.SenderID != v.UserID:
					// Only a duplicate goes out again, and only to its sender.
					f.add("view duplicated", "%s (user %d) chat %d seq %d (sender %d, %q) received twice", v.Member, v.UserID, v.ChatID, r.Seq, r.SenderID, r.ClientMsgID)
				}
				continue
			}
			seen[r.Seq] = r
			got = append(got, r)
		}
		for i, r := range got {
			if r.Seq != int64(i+1) {
				f.add("view out of order", "%s chat %d: message %d received is seq %d (want %d)", v.Member, v.ChatID, i+1, r.Seq, i+1)
				break
			}
		}
		for _, w := range want {
			r, ok := seen[w.Seq]
			switch {
			case !ok:
				if s, acked := ackedSend(sends, w); acked {
					f.add("view lost", "%s chat %d: acknowledged seq %d (sender %d, %q) never received", v.Member, v.ChatID, w.Seq, s.SenderID, s.ClientMsgID)
				} else {
					f.add("view missing", "%s chat %d: stored seq %d (sender %d, %q) never received", v.Member, v.ChatID, w.Seq, w.SenderID, w.ClientMsgID)
				}
			case r != w:
				f.add("view differs", "%s chat %d seq %d: received %+v, PostgreSQL has %+v", v.Member, v.ChatID, w.Seq, r, w)
			}
		}
		if len(got) > len(want) {
			f.add("view differs", "%s chat %d: received %d messages, PostgreSQL has %d", v.Member, v.ChatID, len(got), len(want))
		}
	}
	return Report{Counts: c, Findings: f.list}
}

func ackedSend(sends []Send, r Row) (Send, bool) {
	for _, s := range sends {
		if s.ChatID == r.ChatID && s.SenderID == r.SenderID && s.ClientMsgID == r.ClientMsgID {
			return s, s.Outcome == Acked
		}
	}
	return Send{}, false
}

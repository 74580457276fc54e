package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

// isEntry matches the message event of the entry with seq in chat.
func isEntry(chat, seq int64) func(map[string]any) bool {
	return func(e map[string]any) bool {
		return e["type"] == protocol.TypeMessage && e["chat_id"] == float64(chat) && e["seq"] == float64(seq)
	}
}

// TestEditAndDelete: alice on gateway 1 edits and deletes her message, and
// bob on gateway 2 sees both live, as entries with their own sequence
// numbers; bob cannot change alice's message; history shows the message as
// it is now; a resuming client gets the changes; retries of a delete and of
// a send are answered with the original sequence number.
func TestEditAndDelete(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	bob := signUp(t, s.gateways[1], "bob")
	a := alice.dial()
	b := bob.dial()
	answer := func(w *wsConn, ev protocol.ClientEvent) map[string]any {
		t.Helper()
		w.send(ev)
		return w.waitEvent(isAnswerTo(ev.ID), "answer to "+ev.ID)
	}
	wantAck := func(got map[string]any) {
		t.Helper()
		if got["type"] != protocol.TypeAck {
			t.Fatalf("answer %v, want an ack", got)
		}
	}
	wantError := func(got map[string]any, code protocol.Code) {
		t.Helper()
		if got["type"] != protocol.TypeError || got["code"] != string(code) {
			t.Errorf("answer %v, want error %s", got, code)
		}
	}

	wantAck(answer(a, protocol.ClientEvent{Type: protocol.TypeSend, ID: "s1", ChatID: generalChat, ClientMsgID: "m-1", Text: "helo"}))
	wantAck(answer(b, protocol.ClientEvent{Type: protocol.TypeSend, ID: "s2", ChatID: generalChat, ClientMsgID: "b-1", Text: "bob's"}))
	b.waitEvent(isEntry(generalChat, 2), "bob's message")
	if m := b.waitEvent(isMessage("m-1"), "m-1 at bob"); m["seq"] != float64(1) {
		t.Fatalf("m-1 = %v, want seq 1", m)
	}

	// alice edits: everyone sees the edit live, as entry 3.
	wantAck(answer(a, protocol.ClientEvent{Type: protocol.TypeEdit, ID: "e1", ChatID: generalChat, Seq: 1, ClientMsgID: "e-1", Text: "hello"}))
	for name, w := range map[string]*wsConn{"bob": b, "alice": a} {
		got := w.waitEvent(isEntry(generalChat, 3), "the edit at "+name)
		want := map[string]any{"kind": protocol.KindEdit, "target_seq": float64(1), "text": "hello", "sender": "alice", "client_msg_id": "e-1"}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s got %s = %v, want %v (event %v)", name, k, got[k], v, got)
			}
		}
	}

	// Nobody else may change it; nobody may change what is not a message.
	wantError(answer(b, protocol.ClientEvent{Type: protocol.TypeEdit, ID: "x1", ChatID: generalChat, Seq: 1, ClientMsgID: "x-1", Text: "mine now"}), protocol.CodeNotSender)
	wantError(answer(b, protocol.ClientEvent{Type: protocol.TypeDelete, ID: "x2", ChatID: generalChat, Seq: 1, ClientMsgID: "x-2"}), protocol.CodeNotSender)
	wantError(answer(a, protocol.ClientEvent{Type: protocol.TypeEdit, ID: "x3", ChatID: generalChat, Seq: 99, ClientMsgID: "x-3", Text: "x"}), protocol.CodeMessageNotFound)
	wantError(answer(a, protocol.ClientEvent{Type: protocol.TypeEdit, ID: "x4", ChatID: generalChat, Seq: 3, ClientMsgID: "x-4", Text: "x"}), protocol.CodeMessageNotFound)
	wantError(answer(a, protocol.ClientEvent{Type: protocol.TypeEdit, ID: "x5", ChatID: generalChat, Seq: 1, ClientMsgID: "x-5", Text: " "}), protocol.CodeInvalidMessage)

	// alice deletes: a tombstone, seen live as entry 4.
	wantAck(answer(a, protocol.ClientEvent{Type: protocol.TypeDelete, ID: "d1", ChatID: generalChat, Seq: 1, ClientMsgID: "d-1"}))
	del := b.waitEvent(isEntry(generalChat, 4), "the delete at bob")
	if del["kind"] != protocol.KindDelete || del["target_seq"] != float64(1) || del["text"] != "" {
		t.Errorf("delete event = %v", del)
	}
	wantError(answer(a, protocol.ClientEvent{Type: protocol.TypeEdit, ID: "x6", ChatID: generalChat, Seq: 1, ClientMsgID: "x-6", Text: "back"}), protocol.CodeMessageDeleted)

	// Retries: the delete and the first send get the original sequence.
	for _, tc := range []struct {
		ev  protocol.ClientEvent
		seq float64
	}{
		{protocol.ClientEvent{Type: protocol.TypeDelete, ID: "d1-retry", ChatID: generalChat, Seq: 1, ClientMsgID: "d-1"}, 4},
		{protocol.ClientEvent{Type: protocol.TypeSend, ID: "s1-retry", ChatID: generalChat, ClientMsgID: "m-1", Text: "helo"}, 1},
	} {
		got := answer(a, tc.ev)
		if got["type"] != protocol.TypeAck || got["duplicate"] != true || got["seq"] != tc.seq {
			t.Errorf("retry %s answered %v, want a duplicate ack with seq %v", tc.ev.ID, got, tc.seq)
		}
	}
	// Nothing refused or retried was stored: a new message takes 5.
	wantAck(answer(b, protocol.ClientEvent{Type: protocol.TypeSend, ID: "s3", ChatID: generalChat, ClientMsgID: "b-2", Text: "still here"}))
	if m := a.waitEvent(isMessage("b-2"), "b-2 at alice"); m["seq"] != float64(5) {
		t.Errorf("b-2 = %v, want seq 5", m)
	}
	if n := storedTotal(t, s); n != 5 {
		t.Errorf("%d entries stored, want 5", n)
	}

	// History, through the other gateway, shows the message as it is now
	// and the edit and delete entries.
	var page struct {
		Messages []protocol.Message `json:"messages"`
	}
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
		err := do(context.Background(), http.MethodGet, s.gateways[1]+"/api/v1/chats/1/messages?limit=10", bob.token, nil, &page)
		return err == nil && len(page.Messages) == 5
	}, func() string { return fmt.Sprintf("history holds 5 entries, has %d", len(page.Messages)) })
	describe := func(m protocol.Message) string {
		return fmt.Sprintf("%d %q of %d %q deleted=%v edited=%v", m.Seq, m.Kind, m.TargetSeq, m.Text, m.Deleted, m.EditedAt != nil)
	}
	want := []string{
		`1 "" of 0 "" deleted=true edited=true`,
		`2 "" of 0 "bob's" deleted=false edited=false`,
		`3 "edit" of 1 "" deleted=false edited=false`, // a deletion takes the text out of the edits
		`4 "delete" of 1 "" deleted=false edited=false`,
		`5 "" of 0 "still here" deleted=false edited=false`,
	}
	for i, m := range page.Messages {
		if got := describe(m); got != want[i] {
			t.Errorf("history entry %d = %s, want %s", i, got, want[i])
		}
	}

	// A client that resumes after seq 2 gets the edit and the delete.
	r := bob.dialQuery("resume=1:2")
	r.waitEvent(func(e map[string]any) bool { return e["type"] == protocol.TypeResumed }, "resumed")
	if got := r.seqsOf(generalChat); len(got) != 3 || got[0] != 3 || got[2] != 5 {
		t.Errorf("resumed with entries %v, want 3, 4, 5", got)
	}
	if e := r.waitEvent(isEntry(generalChat, 4), "the delete on resume"); e["kind"] != protocol.KindDelete || e["target_seq"] != float64(1) {
		t.Errorf("resumed delete = %v", e)
	}
}

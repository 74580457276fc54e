package chats

import (
	"context"
	"errors"
	"strings"
	"testing"
)

type fakeStore struct {
	chats   map[int64]Chat
	members map[[2]int64]bool
}

func (f fakeStore) Chat(_ context.Context, id int64) (Chat, error) {
	c, ok := f.chats[id]
	if !ok {
		return Chat{}, ErrChatNotFound
	}
	return c, nil
}

func (f fakeStore) IsMember(_ context.Context, chatID, userID int64) (bool, error) {
	return f.members[[2]int64{chatID, userID}], nil
}

func (f fakeStore) UserChats(context.Context, int64) ([]int64, error) { return nil, nil }

type recordingPublisher struct{ published []Message }

func (p *recordingPublisher) Publish(_ context.Context, m Message) (bool, error) {
	p.published = append(p.published, m)
	return false, nil
}

func TestSend(t *testing.T) {
	t.Parallel()
	store := fakeStore{
		chats:   map[int64]Chat{1: {ID: 1, Name: "general", Everyone: true}, 2: {ID: 2, Name: "team"}},
		members: map[[2]int64]bool{{2, 10}: true},
	}
	ok := Message{ChatID: 1, SenderID: 11, Sender: "bob", ClientMsgID: "c-1", Text: "hi"}
	with := func(f func(*Message)) Message { m := ok; f(&m); return m }
	tests := []struct {
		name    string
		msg     Message
		wantErr error
	}{
		{name: "general accepts anyone", msg: ok},
		{name: "member of private chat", msg: with(func(m *Message) { m.ChatID, m.SenderID = 2, 10 })},
		{name: "non-member", msg: with(func(m *Message) { m.ChatID = 2 }), wantErr: ErrNotAMember},
		{name: "unknown chat", msg: with(func(m *Message) { m.ChatID = 99 }), wantErr: ErrChatNotFound},
		{name: "empty text", msg: with(func(m *Message) { m.Text = " \n " }), wantErr: ErrInvalidMessage},
		{name: "oversized text", msg: with(func(m *Message) { m.Text = strings.Repeat("é", 4001) }), wantErr: ErrInvalidMessage},
		{name: "max text", msg: with(func(m *Message) { m.Text = strings.Repeat("é", 4000) })},
		{name: "bad client id", msg: with(func(m *Message) { m.ClientMsgID = "a b" }), wantErr: ErrInvalidMessage},
		{name: "missing client id", msg: with(func(m *Message) { m.ClientMsgID = "" }), wantErr: ErrInvalidMessage},
		{name: "invalid utf8", msg: with(func(m *Message) { m.Text = "\xff" }), wantErr: ErrInvalidMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pub := &recordingPublisher{}
			_, err := NewService(store, pub).Send(context.Background(), tc.msg)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Send error = %v, want %v", err, tc.wantErr)
			}
			wantPublished := 0
			if tc.wantErr == nil {
				wantPublished = 1
			}
			if len(pub.published) != wantPublished {
				t.Fatalf("published %d messages, want %d", len(pub.published), wantPublished)
			}
		})
	}
}

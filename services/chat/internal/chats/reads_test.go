package chats

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
)

// memReads is an in-memory ReadStore.
type memReads struct {
	mu  sync.Mutex
	pos map[[2]int64]int64 // user, chat -> seq
}

func (m *memReads) ReadPositions(_ context.Context, userID int64) (map[int64]int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[int64]int64{}
	for k, v := range m.pos {
		if k[0] == userID {
			out[k[1]] = v
		}
	}
	return out, nil
}

func (m *memReads) MoveReadPosition(_ context.Context, userID, chatID, seq int64) (int64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]int64{userID, chatID}
	if m.pos[k] >= seq {
		return m.pos[k], false, nil
	}
	m.pos[k] = seq
	return seq, true, nil
}

// fakeCounter answers as if every chat had last[chat] entries, all by
// others.
type fakeCounter struct {
	last    map[int64]int64
	failure error
}

func (c *fakeCounter) Unread(_ context.Context, _ int64, marks []ReadMark) ([]UnreadCount, error) {
	if c.failure != nil {
		return nil, c.failure
	}
	out := make([]UnreadCount, len(marks))
	for i, m := range marks {
		out[i] = UnreadCount{ChatID: m.ChatID, LastSeq: c.last[m.ChatID], Unread: int(max(0, c.last[m.ChatID]-m.Seq))}
	}
	return out, nil
}

type recordingReadEvents struct {
	mu     sync.Mutex
	events []ReadEvent
}

func (r *recordingReadEvents) ReadMoved(_ context.Context, ev ReadEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	return nil
}

func TestReadPositions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	counter := &fakeCounter{last: map[int64]int64{GeneralChatID: 5, f.team.ID: 10}}
	events := &recordingReadEvents{}
	reads := NewReads(f.svc, &memReads{pos: map[[2]int64]int64{}}, counter, events, slog.New(slog.NewTextHandler(io.Discard, nil)))

	list := func(u Member) []Chat {
		t.Helper()
		cs, missing, err := reads.List(ctx, u.ID)
		if err != nil || missing {
			t.Fatalf("list: %v, counts missing %v", err, missing)
		}
		return cs
	}
	counts := func(cs []Chat) [][3]int64 {
		var out [][3]int64
		for _, c := range cs {
			out = append(out, [3]int64{c.LastSeq, c.ReadSeq, int64(c.Unread)})
		}
		return out
	}
	if diff := gocmp.Diff([][3]int64{{5, 0, 5}, {10, 0, 10}}, counts(list(bob))); diff != "" {
		t.Errorf("bob's counts before reading (-want +got):\n%s", diff)
	}

	p, err := reads.MarkRead(ctx, bob.ID, f.team.ID, 7)
	if err != nil || p != (ReadPosition{ChatID: f.team.ID, Seq: 7, Unread: 3, Moved: true}) {
		t.Fatalf("read to 7: %+v, %v", p, err)
	}
	// Backwards: nothing moves, the stored position comes back.
	p, err = reads.MarkRead(ctx, bob.ID, f.team.ID, 4)
	if err != nil || p != (ReadPosition{ChatID: f.team.ID, Seq: 7, Unread: 3}) {
		t.Fatalf("read back to 4: %+v, %v", p, err)
	}
	if _, err := reads.MarkRead(ctx, bob.ID, GeneralChatID, 5); err != nil {
		t.Fatal(err)
	}
	if diff := gocmp.Diff([]ReadEvent{{UserID: bob.ID, ChatID: f.team.ID, Seq: 7, Unread: 3}, {UserID: bob.ID, ChatID: GeneralChatID, Seq: 5}}, events.events); diff != "" {
		t.Errorf("read events (-want +got):\n%s", diff)
	}
	if diff := gocmp.Diff([][3]int64{{5, 5, 0}, {10, 7, 3}}, counts(list(bob))); diff != "" {
		t.Errorf("bob's counts after reading (-want +got):\n%s", diff)
	}
	if diff := gocmp.Diff([][3]int64{{5, 0, 5}, {10, 0, 10}}, counts(list(alice))); diff != "" {
		t.Errorf("alice's counts (-want +got):\n%s", diff)
	}

	refusals := []struct {
		name     string
		user     Member
		chat     int64
		seq      int64
		want     error
		wantMsg  string
		countsOK bool
	}{
		{"beyond the newest", bob, f.team.ID, 11, ErrInvalidInput, "beyond", true},
		{"zero seq", bob, f.team.ID, 0, ErrInvalidInput, "positive", true},
		{"not a member", carol, f.team.ID, 1, ErrNotAMember, "", true},
		{"unknown chat", bob, 999, 1, ErrChatNotFound, "", true},
		{"no chat", bob, 0, 1, ErrChatNotFound, "", true},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			_, err := reads.MarkRead(ctx, tc.user.ID, tc.chat, tc.seq)
			wantErr(t, err, tc.want, tc.wantMsg)
		})
	}

	// History down: a read is refused (retryable), the list comes without
	// counts but with read positions.
	down := errors.New("history down")
	counter.failure = down
	if _, err := reads.MarkRead(ctx, bob.ID, f.team.ID, 9); !errors.Is(err, down) {
		t.Errorf("read with history down: %v, want the cause", err)
	}
	cs, missing, err := reads.List(ctx, bob.ID)
	if err != nil || !missing {
		t.Fatalf("list with history down: %v, counts missing %v", err, missing)
	}
	if diff := gocmp.Diff([][3]int64{{0, 5, 0}, {0, 7, 0}}, counts(cs)); diff != "" {
		t.Errorf("counts with history down (-want +got):\n%s", diff)
	}
	if len(events.events) != 2 {
		t.Errorf("%d read events, want no more than the 2 moves", len(events.events))
	}
}

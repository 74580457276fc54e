package chatstore

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/communications/communications/services/chat/internal/chats"
)

// TestDirectChat: one chat per pair of users, whichever side starts it and
// however many start it at once; direct chats leave chat names alone.
func TestDirectChat(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := New(openPool(t, Migrations()))
	alice := chats.Member{ID: 10, Username: "alice"}
	bob := chats.Member{ID: 11, Username: "Bob"}
	carol := chats.Member{ID: 12, Username: "carol"}

	// Concurrent starts of the same pair, from both sides: one creates.
	const starters = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		ids     = map[int64]int{}
		created int
	)
	for i := range starters {
		wg.Go(func() {
			a, b := alice, bob
			if i%2 == 1 {
				a, b = b, a
			}
			c, made, err := s.DirectChat(ctx, a, b)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("start %d: %v", i, err)
				return
			}
			ids[c.ID]++
			if made {
				created++
			}
		})
	}
	wg.Wait()
	if len(ids) != 1 || created != 1 {
		t.Fatalf("concurrent starts gave chats %v with %d created; want one chat created once", ids, created)
	}
	var dmID int64
	for id := range ids {
		dmID = id
	}
	dm, err := s.ChatWithMembers(ctx, dmID)
	if err != nil {
		t.Fatal(err)
	}
	want := chats.Chat{ID: dmID, Direct: true, Members: []chats.Member{alice, bob}}
	if diff := cmp.Diff(want, dm, ignoreTime); diff != "" {
		t.Errorf("direct chat (-want +got):\n%s", diff)
	}
	if c, err := s.Chat(ctx, dmID); err != nil || !c.Direct || c.Name != "" || c.CreatorID != 0 {
		t.Errorf("chat %+v, %v; want direct, no name, no creator", c, err)
	}

	// Another pair is another chat; both have the empty name, and named
	// chats are not affected.
	other, made, err := s.DirectChat(ctx, carol, alice)
	if err != nil || !made || other.ID == dmID {
		t.Fatalf("alice and carol: chat %d, created %v, %v; want a new chat", other.ID, made, err)
	}
	zed, err := s.CreateChat(ctx, chats.Chat{Name: "zed", CreatorID: alice.ID, Members: []chats.Member{alice}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateChat(ctx, chats.Chat{Name: "ZED", CreatorID: bob.ID, Members: []chats.Member{bob}}); !errors.Is(err, chats.ErrNameTaken) {
		t.Errorf("a taken name with direct chats around: %v, want ErrNameTaken", err)
	}
	if _, _, err := s.DirectChat(ctx, alice, alice); err == nil {
		t.Error("a direct chat with oneself was stored")
	}

	// alice's list: general, then by name, a direct chat by the other
	// member's name (Bob, carol, zed).
	list, err := s.ListChats(ctx, alice.ID)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, c := range list {
		got = append(got, c.ID)
	}
	if diff := cmp.Diff([]int64{chats.GeneralChatID, dmID, other.ID, zed.ID}, got); diff != "" {
		t.Errorf("alice's chats (-want +got):\n%s", diff)
	}
}

// TestReadPositions: a position only moves forward.
func TestReadPositions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := New(openPool(t, Migrations()))
	team, err := s.CreateChat(ctx, chats.Chat{Name: "team", CreatorID: 10, Members: []chats.Member{{ID: 10, Username: "alice"}}})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		user, chat, seq int64
		want            int64
		wantMoved       bool
	}{
		{user: 10, chat: team.ID, seq: 5, want: 5, wantMoved: true},
		{user: 10, chat: team.ID, seq: 3, want: 5},
		{user: 10, chat: team.ID, seq: 5, want: 5},
		{user: 10, chat: team.ID, seq: 9, want: 9, wantMoved: true},
		{user: 11, chat: team.ID, seq: 2, want: 2, wantMoved: true},
		{user: 10, chat: chats.GeneralChatID, seq: 1, want: 1, wantMoved: true},
	}
	for i, st := range steps {
		got, moved, err := s.MoveReadPosition(ctx, st.user, st.chat, st.seq)
		if err != nil || got != st.want || moved != st.wantMoved {
			t.Errorf("step %d: user %d to %d: %d, moved %v, %v; want %d, moved %v", i, st.user, st.seq, got, moved, err, st.want, st.wantMoved)
		}
	}
	if _, _, err := s.MoveReadPosition(ctx, 10, 999, 1); !errors.Is(err, chats.ErrChatNotFound) {
		t.Errorf("unknown chat: %v, want ErrChatNotFound", err)
	}
	got, err := s.ReadPositions(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int64]int64{team.ID: 9, chats.GeneralChatID: 1}, got); diff != "" {
		t.Errorf("positions (-want +got):\n%s", diff)
	}

	// Concurrent reads of one user: the highest wins.
	var wg sync.WaitGroup
	for seq := int64(10); seq <= 30; seq++ {
		wg.Go(func() {
			if _, _, err := s.MoveReadPosition(ctx, 12, team.ID, seq); err != nil {
				t.Errorf("move to %d: %v", seq, err)
			}
		})
	}
	wg.Wait()
	if got, err := s.ReadPositions(ctx, 12); err != nil || got[team.ID] != 30 {
		t.Errorf("after concurrent reads: %v, %v; want 30", got, err)
	}
}

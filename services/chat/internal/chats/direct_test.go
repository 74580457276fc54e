package chats

import (
	"context"
	"errors"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
)

// DirectChat implements Store for the in-memory store.
func (s *memStore) DirectChat(_ context.Context, a, b Member) (Chat, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.chats {
		if c.Direct && c.hasMember(a.ID) && c.hasMember(b.ID) {
			return c, false, nil
		}
	}
	c := Chat{ID: s.next, Direct: true, CreatedAt: time.Unix(1000, 0).UTC(), Members: sortMembers([]Member{a, b})}
	s.next++
	s.chats[c.ID] = c
	return c, true, nil
}

func TestStartDirect(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	start := func(u Member, other string) (Chat, bool, error) {
		return f.svc.StartDirect(ctx, DirectStart{UserID: u.ID, Username: u.Username, Other: other})
	}

	dm, created, err := start(alice, "BOB")
	if err != nil || !created {
		t.Fatalf("start: %v, created %v", err, created)
	}
	want := Chat{ID: dm.ID, Direct: true, CreatedAt: dm.CreatedAt, Members: []Member{alice, bob}}
	if diff := gocmp.Diff(want, dm); diff != "" {
		t.Errorf("direct chat (-want +got):\n%s", diff)
	}
	if diff := gocmp.Diff([]Event{{Kind: EventCreated, Chat: dm, Added: []int64{alice.ID, bob.ID}}}, f.events.events); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	// Again, from either side: the same chat, announced no more.
	for _, u := range []Member{alice, bob} {
		other := "bob"
		if u == bob {
			other = "Alice"
		}
		again, created, err := start(u, other)
		if err != nil || created || again.ID != dm.ID {
			t.Errorf("%s starts it again: chat %d, created %v, %v; want chat %d, not created", u.Username, again.ID, created, err, dm.ID)
		}
	}
	if len(f.events.events) != 1 {
		t.Errorf("%d events, want only the creation", len(f.events.events))
	}

	refusals := []struct {
		name    string
		user    Member
		other   string
		want    error
		wantMsg string
	}{
		{"with oneself", alice, "ALICE", ErrInvalidInput, "yourself"},
		{"no name", alice, "", ErrInvalidInput, "username"},
		{"unknown user", alice, "zed", ErrUnknownUser, `"zed"`},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := start(tc.user, tc.other)
			wantErr(t, err, tc.want, tc.wantMsg)
		})
	}

	// Nobody edits a direct chat; a non-member learns nothing about it.
	_, err = f.svc.UpdateChat(ctx, ChatEdit{ActorID: alice.ID, ChatID: dm.ID, Name: ptr("ours")})
	wantErr(t, err, ErrNotCreator, "direct")
	_, err = f.svc.UpdateChat(ctx, ChatEdit{ActorID: carol.ID, ChatID: dm.ID, Name: ptr("ours")})
	if !errors.Is(err, ErrNotAMember) {
		t.Errorf("non-member edits: %v, want ErrNotAMember", err)
	}
	if err := f.svc.Access(ctx, carol.ID, dm.ID); !errors.Is(err, ErrNotAMember) {
		t.Errorf("non-member access: %v, want ErrNotAMember", err)
	}
}

package chats

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// memStore is an in-memory Store: "general" (id 1) and whatever the test
// adds.
type memStore struct {
	mu    sync.Mutex
	chats map[int64]Chat
	next  int64
}

func newMemStore() *memStore {
	return &memStore{
		chats: map[int64]Chat{GeneralChatID: {ID: GeneralChatID, Name: "general", Description: "Everyone is here.", Everyone: true}},
		next:  2,
	}
}

func sortMembers(ms []Member) []Member {
	ms = slices.Clone(ms)
	slices.SortFunc(ms, func(a, b Member) int {
		return cmp.Or(strings.Compare(strings.ToLower(a.Username), strings.ToLower(b.Username)), cmp.Compare(a.ID, b.ID))
	})
	return ms
}

func (s *memStore) Chat(_ context.Context, id int64) (Chat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.chats[id]
	if !ok {
		return Chat{}, ErrChatNotFound
	}
	c.Members = nil
	return c, nil
}

func (s *memStore) IsMember(_ context.Context, chatID, userID int64) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.chats[chatID].hasMember(userID), nil
}

func (s *memStore) InChat(_ context.Context, chatID, userID int64) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.chats[chatID]
	if !ok {
		return false, ErrChatNotFound
	}
	return c.Everyone || c.hasMember(userID), nil
}

func (s *memStore) UserChats(ctx context.Context, userID int64) ([]int64, error) {
	cs, _ := s.ListChats(ctx, userID)
	var ids []int64
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	slices.Sort(ids)
	return ids, nil
}

func (s *memStore) ChatWithMembers(_ context.Context, id int64) (Chat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.chats[id]
	if !ok {
		return Chat{}, ErrChatNotFound
	}
	c.Members = slices.Clone(c.Members)
	return c, nil
}

func (s *memStore) ListChats(_ context.Context, userID int64) ([]Chat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Chat
	for _, c := range s.chats {
		if c.Everyone || c.hasMember(userID) {
			c.Members = slices.Clone(c.Members)
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b Chat) int {
		if a.Everyone != b.Everyone {
			if a.Everyone {
				return -1
			}
			return 1
		}
		return cmp.Or(strings.Compare(strings.ToLower(a.Name), strings.ToLower(b.Name)), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

func (s *memStore) nameTaken(name string, except int64) bool {
	for id, c := range s.chats {
		if id != except && strings.EqualFold(c.Name, name) {
			return true
		}
	}
	return false
}

func (s *memStore) CreateChat(_ context.Context, c Chat) (Chat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nameTaken(c.Name, 0) {
		return Chat{}, ErrNameTaken
	}
	c.ID = s.next
	s.next++
	c.CreatedAt = time.Unix(1000, 0).UTC()
	c.Members = sortMembers(c.Members)
	s.chats[c.ID] = c
	return c, nil
}

func (s *memStore) UpdateChat(_ context.Context, id int64, decide func(Chat) (Change, error)) (Chat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.chats[id]
	if !ok {
		return Chat{}, ErrChatNotFound
	}
	cur.Members = slices.Clone(cur.Members)
	ch, err := decide(cur)
	if err != nil {
		return Chat{}, err
	}
	next := cur
	if ch.Name != nil {
		if s.nameTaken(*ch.Name, id) {
			return Chat{}, ErrNameTaken
		}
		next.Name = *ch.Name
	}
	if ch.Description != nil {
		next.Description = *ch.Description
	}
	next.Members = slices.DeleteFunc(next.Members, func(m Member) bool { return slices.Contains(ch.Remove, m.ID) })
	next.Members = sortMembers(append(next.Members, ch.Add...))
	s.chats[id] = next
	return next, nil
}

// users is a fake directory of accounts, answering as the auth service
// does.
type users struct {
	mu      sync.Mutex
	byName  map[string]Member
	calls   int
	failure error
}

func newUsers(ms ...Member) *users {
	u := &users{byName: map[string]Member{}}
	for _, m := range ms {
		u.byName[strings.ToLower(m.Username)] = m
	}
	return u
}

func (u *users) Lookup(_ context.Context, names []string) ([]Member, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls++
	if u.failure != nil {
		return nil, u.failure
	}
	out := make([]Member, len(names))
	for i, n := range names {
		m, ok := u.byName[strings.ToLower(n)]
		if !ok {
			return nil, &RequestError{Err: ErrUnknownUser, Msg: fmt.Sprintf("unknown user %q", n)}
		}
		out[i] = m
	}
	return out, nil
}

type recordingEvents struct {
	mu     sync.Mutex
	events []Event
}

func (r *recordingEvents) ChatChanged(_ context.Context, ev Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	return nil
}

type recordingPublisher struct{ published []Message }

func (p *recordingPublisher) Publish(_ context.Context, m Message) (bool, error) {
	p.published = append(p.published, m)
	return false, nil
}

var (
	alice = Member{ID: 10, Username: "alice"}
	bob   = Member{ID: 11, Username: "bob"}
	carol = Member{ID: 12, Username: "Carol"}
	dave  = Member{ID: 13, Username: "dave"}
)

// many returns n users u000, u001, ...
func many(n int) []Member {
	ms := make([]Member, n)
	for i := range ms {
		ms[i] = Member{ID: int64(100 + i), Username: fmt.Sprintf("u%03d", i)}
	}
	return ms
}

func names(ms []Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Username
	}
	return out
}

type fixture struct {
	store  *memStore
	users  *users
	events *recordingEvents
	svc    *Service
	team   Chat // created by alice with bob
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureWith(t, Config{})
}

// newFixtureWith is newFixture with the Service configured by cfg.
func newFixtureWith(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := &fixture{
		store:  newMemStore(),
		users:  newUsers(append([]Member{alice, bob, carol, dave}, many(101)...)...),
		events: &recordingEvents{},
	}
	f.svc = NewService(f.store, &recordingPublisher{}, nil, f.users, f.events, slog.New(slog.NewTextHandler(io.Discard, nil)), cfg)
	team, err := f.svc.CreateChat(context.Background(), NewChat{
		CreatorID: alice.ID, CreatorName: alice.Username, Name: "Team", Description: "our team", Members: []string{"bob"},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.team = team
	f.events.events = nil
	f.users.calls = 0
	return f
}

func ptr[T any](v T) *T { return &v }

// wantErr checks err against want and, when wantMsg is set, that the
// client's message contains it.
func wantErr(t *testing.T, err, want error, wantMsg string) {
	t.Helper()
	if !errors.Is(err, want) || (want == nil) != (err == nil) {
		t.Fatalf("error = %v, want %v", err, want)
	}
	if wantMsg != "" {
		re, ok := errors.AsType[*RequestError](err)
		if !ok || !strings.Contains(re.Msg, wantMsg) {
			t.Fatalf("error %v: want a RequestError whose message contains %q", err, wantMsg)
		}
	}
}

func TestCreateChat(t *testing.T) {
	t.Parallel()
	base := NewChat{CreatorID: alice.ID, CreatorName: "alice", Name: "project", Description: "about it"}
	with := func(f func(*NewChat)) NewChat { c := base; f(&c); return c }
	tests := []struct {
		name        string
		req         NewChat
		usersDown   bool
		wantErr     error
		wantMsg     string
		wantName    string
		wantMembers []Member
		wantLookups int
	}{
		{name: "creator alone", req: base, wantName: "project", wantMembers: []Member{alice}},
		{name: "members in any letter case", req: with(func(c *NewChat) { c.Members = []string{"CAROL", "Bob"} }),
			wantName: "project", wantMembers: []Member{alice, bob, carol}, wantLookups: 1},
		{name: "the creator listed is ignored", req: with(func(c *NewChat) { c.Members = []string{"bob", "ALICE"} }),
			wantName: "project", wantMembers: []Member{alice, bob}, wantLookups: 1},
		{name: "name trimmed", req: with(func(c *NewChat) { c.Name = " \t side project  " }),
			wantName: "side project", wantMembers: []Member{alice}},
		{name: "longest name", req: with(func(c *NewChat) { c.Name = strings.Repeat("é", 64) }),
			wantName: strings.Repeat("é", 64), wantMembers: []Member{alice}},
		{name: "longest description", req: with(func(c *NewChat) { c.Description = strings.Repeat("é", 500) }),
			wantName: "project", wantMembers: []Member{alice}},
		{name: "most members", req: with(func(c *NewChat) { c.Members = names(many(100)) }),
			wantName: "project", wantMembers: append([]Member{alice}, many(100)...), wantLookups: 1},
		{name: "empty name", req: with(func(c *NewChat) { c.Name = "  " }), wantErr: ErrInvalidInput, wantMsg: "empty"},
		{name: "name too long", req: with(func(c *NewChat) { c.Name = strings.Repeat("é", 65) }), wantErr: ErrInvalidInput, wantMsg: "64"},
		{name: "name with a newline", req: with(func(c *NewChat) { c.Name = "a\nb" }), wantErr: ErrInvalidInput, wantMsg: "control"},
		{name: "name not UTF-8", req: with(func(c *NewChat) { c.Name = "\xff" }), wantErr: ErrInvalidInput, wantMsg: "UTF-8"},
		{name: "description with a NUL", req: with(func(c *NewChat) { c.Description = "a\x00b" }), wantErr: ErrInvalidInput, wantMsg: "NUL"},
		{name: "description too long", req: with(func(c *NewChat) { c.Description = strings.Repeat("é", 501) }),
			wantErr: ErrInvalidInput, wantMsg: "500"},
		{name: "too many members", req: with(func(c *NewChat) { c.Members = names(many(101)) }), wantErr: ErrInvalidInput, wantMsg: "100"},
		{name: "member twice", req: with(func(c *NewChat) { c.Members = []string{"bob", "carol", "bob"} }),
			wantErr: ErrDuplicateMember, wantMsg: `"bob"`},
		{name: "member twice in other case", req: with(func(c *NewChat) { c.Members = []string{"bob", "BOB"} }),
			wantErr: ErrDuplicateMember, wantMsg: `"BOB"`},
		{name: "creator twice", req: with(func(c *NewChat) { c.Members = []string{"alice", "Alice"} }), wantErr: ErrDuplicateMember},
		{name: "unknown user", req: with(func(c *NewChat) { c.Members = []string{"bob", "zed"} }),
			wantErr: ErrUnknownUser, wantMsg: `unknown user "zed"`, wantLookups: 1},
		{name: "name taken in another case", req: with(func(c *NewChat) { c.Name = "TEAM" }), wantErr: ErrNameTaken},
		{name: "name of general", req: with(func(c *NewChat) { c.Name = "General " }), wantErr: ErrNameTaken},
		{name: "no creator", req: with(func(c *NewChat) { c.CreatorID = 0 }), wantErr: ErrInvalidInput},
		{name: "no creator name", req: with(func(c *NewChat) { c.CreatorName = "" }), wantErr: ErrInvalidInput},
		{name: "auth unavailable", req: with(func(c *NewChat) { c.Members = []string{"bob"} }), usersDown: true,
			wantErr: errUnavailable, wantLookups: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			if tc.usersDown {
				f.users.failure = fmt.Errorf("request: %w", errUnavailable)
			}
			got, err := f.svc.CreateChat(context.Background(), tc.req)
			wantErr(t, err, tc.wantErr, tc.wantMsg)
			if f.users.calls != tc.wantLookups {
				t.Errorf("%d lookups, want %d", f.users.calls, tc.wantLookups)
			}
			if tc.wantErr != nil {
				if n := len(f.store.chats); n != 2 {
					t.Errorf("%d chats stored after a refusal, want 2", n)
				}
				if len(f.events.events) != 0 {
					t.Errorf("events after a refusal: %+v", f.events.events)
				}
				return
			}
			want := Chat{ID: got.ID, Name: tc.wantName, Description: tc.req.Description, CreatorID: alice.ID,
				CreatedAt: got.CreatedAt, Members: sortMembers(tc.wantMembers)}
			if diff := gocmp.Diff(want, got); diff != "" {
				t.Errorf("chat (-want +got):\n%s", diff)
			}
			added := make([]int64, len(want.Members))
			for i, m := range want.Members {
				added[i] = m.ID
			}
			if diff := gocmp.Diff([]Event{{Kind: EventCreated, Chat: want, Added: added}}, f.events.events); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
}

var errUnavailable = errors.New("auth did not answer")

func TestUpdateChat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		edit        func(team int64) ChatEdit
		wantErr     error
		wantMsg     string
		wantName    string  // "" means unchanged ("Team")
		wantDesc    *string // nil means unchanged ("our team")
		wantMembers []Member
		wantEvent   *Event // Chat filled in from the result
		wantLookups int
	}{
		{name: "rename", edit: func(id int64) ChatEdit { return ChatEdit{ActorID: alice.ID, ChatID: id, Name: ptr(" dream team ")} },
			wantName: "dream team", wantMembers: []Member{alice, bob}, wantEvent: &Event{Kind: EventUpdated}},
		{name: "rename to another letter case", edit: func(id int64) ChatEdit { return ChatEdit{ActorID: alice.ID, ChatID: id, Name: ptr("TEAM")} },
			wantName: "TEAM", wantMembers: []Member{alice, bob}, wantEvent: &Event{Kind: EventUpdated}},
		{name: "same name is no change", edit: func(id int64) ChatEdit { return ChatEdit{ActorID: alice.ID, ChatID: id, Name: ptr("Team")} },
			wantMembers: []Member{alice, bob}},
		{name: "nothing", edit: func(id int64) ChatEdit { return ChatEdit{ActorID: alice.ID, ChatID: id} },
			wantMembers: []Member{alice, bob}},
		{name: "describe", edit: func(id int64) ChatEdit { return ChatEdit{ActorID: alice.ID, ChatID: id, Description: ptr("")} },
			wantDesc: ptr(""), wantMembers: []Member{alice, bob}, wantEvent: &Event{Kind: EventUpdated}},
		{name: "add", edit: func(id int64) ChatEdit { return ChatEdit{ActorID: alice.ID, ChatID: id, AddMembers: []string{"carol"}} },
			wantMembers: []Member{alice, bob, carol}, wantEvent: &Event{Kind: EventMembers, Added: []int64{carol.ID}}, wantLookups: 1},
		{name: "add a member is a no-op", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, AddMembers: []string{"BOB", "alice"}}
		}, wantMembers: []Member{alice, bob}, wantLookups: 1},
		{name: "add and remove", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, AddMembers: []string{"carol", "bob"}, RemoveMembers: []string{"Bob"}}
		}, wantErr: ErrDuplicateMember},
		{name: "swap members", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, AddMembers: []string{"carol", "dave"}, RemoveMembers: []string{"bob"}}
		}, wantMembers: []Member{alice, carol, dave},
			wantEvent: &Event{Kind: EventMembers, Added: []int64{carol.ID, dave.ID}, Removed: []int64{bob.ID}}, wantLookups: 1},
		{name: "rename and add", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, Name: ptr("bigger"), AddMembers: []string{"dave"}}
		}, wantName: "bigger", wantMembers: []Member{alice, bob, dave},
			wantEvent: &Event{Kind: EventUpdated, Added: []int64{dave.ID}}, wantLookups: 1},
		{name: "remove a non-member", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, AddMembers: []string{"dave"}, RemoveMembers: []string{"carol"}}
		}, wantErr: ErrInvalidInput, wantMsg: `"Carol" is not a member`, wantLookups: 1},
		{name: "remove the creator", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, RemoveMembers: []string{"ALICE"}}
		}, wantErr: ErrInvalidInput, wantMsg: "creator", wantLookups: 1},
		{name: "remove an unknown user", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, RemoveMembers: []string{"zed"}}
		}, wantErr: ErrUnknownUser, wantMsg: `"zed"`, wantLookups: 1},
		{name: "add an unknown user", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, Name: ptr("x"), AddMembers: []string{"carol", "zed"}}
		}, wantErr: ErrUnknownUser, wantMsg: `"zed"`, wantLookups: 1},
		{name: "too many members", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, AddMembers: names(many(60)), RemoveMembers: names(many(101)[60:])}
		}, wantErr: ErrInvalidInput, wantMsg: "100"},
		{name: "member not creator", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: bob.ID, ChatID: id, Name: ptr("bobs"), AddMembers: []string{"zed"}}
		}, wantErr: ErrNotCreator},
		{name: "non-member", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: carol.ID, ChatID: id, AddMembers: []string{"carol"}}
		}, wantErr: ErrNotAMember},
		{name: "unknown chat", edit: func(int64) ChatEdit { return ChatEdit{ActorID: alice.ID, ChatID: 99, Name: ptr("x")} },
			wantErr: ErrChatNotFound},
		{name: "nobody edits general", edit: func(int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: GeneralChatID, Name: ptr("mine")}
		}, wantErr: ErrNotCreator, wantMsg: `"general"`},
		{name: "name taken", edit: func(id int64) ChatEdit { return ChatEdit{ActorID: alice.ID, ChatID: id, Name: ptr("GENERAL")} },
			wantErr: ErrNameTaken},
		{name: "empty name", edit: func(id int64) ChatEdit { return ChatEdit{ActorID: alice.ID, ChatID: id, Name: ptr(" ")} },
			wantErr: ErrInvalidInput, wantMsg: "empty"},
		{name: "description too long", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, Description: ptr(strings.Repeat("d", 501))}
		}, wantErr: ErrInvalidInput, wantMsg: "500"},
		{name: "description with a NUL", edit: func(id int64) ChatEdit {
			return ChatEdit{ActorID: alice.ID, ChatID: id, Description: ptr("a\x00b")}
		}, wantErr: ErrInvalidInput, wantMsg: "NUL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			edit := tc.edit(f.team.ID)
			got, err := f.svc.UpdateChat(context.Background(), edit)
			wantErr(t, err, tc.wantErr, tc.wantMsg)
			if f.users.calls != tc.wantLookups {
				t.Errorf("%d lookups, want %d", f.users.calls, tc.wantLookups)
			}
			stored, _ := f.store.ChatWithMembers(context.Background(), f.team.ID)
			if tc.wantErr != nil {
				if diff := gocmp.Diff(f.team, stored); diff != "" {
					t.Errorf("the chat changed after a refusal (-before +after):\n%s", diff)
				}
				if len(f.events.events) != 0 {
					t.Errorf("events after a refusal: %+v", f.events.events)
				}
				return
			}
			want := f.team
			want.Members = tc.wantMembers
			if tc.wantName != "" {
				want.Name = tc.wantName
			}
			if tc.wantDesc != nil {
				want.Description = *tc.wantDesc
			}
			if diff := gocmp.Diff(want, got); diff != "" {
				t.Errorf("chat (-want +got):\n%s", diff)
			}
			if diff := gocmp.Diff(want, stored); diff != "" {
				t.Errorf("stored chat (-want +got):\n%s", diff)
			}
			var wantEvents []Event
			if tc.wantEvent != nil {
				ev := *tc.wantEvent
				ev.Chat = want
				wantEvents = []Event{ev}
			}
			if diff := gocmp.Diff(wantEvents, f.events.events, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
}

// TestMemberLimit: a create or an edit that would leave a chat with more
// than Config.MaxMembers members, the creator included, is refused with
// ErrInvalidInput and changes nothing; adding a member counts only when
// they are not one yet; a chat stored over the limit (before there was
// one) may be renamed, shrink or swap members, but not grow.
func TestMemberLimit(t *testing.T) {
	t.Parallel()
	const big int64 = 50 // the chat edited: alice and size-1 of many()
	tests := []struct {
		name        string
		max         int       // Config.MaxMembers; 0 gives the default
		create      *NewChat  // by alice, named "big"
		size        int       // members of chat big before edit
		edit        *ChatEdit // by alice, of chat big
		wantErr     error
		wantMsg     string
		wantMembers int
		wantEvent   bool
	}{
		{name: "create at the limit", max: 5, create: &NewChat{Members: []string{"bob", "carol", "dave", "u000"}},
			wantMembers: 5, wantEvent: true},
		{name: "create over the limit", max: 5, create: &NewChat{Members: []string{"bob", "carol", "dave", "u000", "u001"}},
			wantErr: ErrInvalidInput, wantMsg: "a chat has at most 5 members"},
		{name: "create listing the creator counts it once", max: 5, create: &NewChat{Members: []string{"bob", "ALICE", "carol", "dave", "u000"}},
			wantMembers: 5, wantEvent: true},
		{name: "add up to the limit", max: 5, size: 3, edit: &ChatEdit{AddMembers: []string{"bob", "carol"}},
			wantMembers: 5, wantEvent: true},
		{name: "add over the limit", max: 5, size: 3, edit: &ChatEdit{AddMembers: []string{"bob", "carol", "dave"}},
			wantErr: ErrInvalidInput, wantMsg: "a chat has at most 5 members"},
		{name: "adding members is no growth", max: 5, size: 5, edit: &ChatEdit{AddMembers: []string{"u000", "ALICE"}},
			wantMembers: 5},
		{name: "add and remove at the limit", max: 5, size: 5, edit: &ChatEdit{AddMembers: []string{"bob"}, RemoveMembers: []string{"u000"}},
			wantMembers: 5, wantEvent: true},
		{name: "add and remove over the limit", max: 5, size: 5, edit: &ChatEdit{AddMembers: []string{"bob", "carol"}, RemoveMembers: []string{"u000"}},
			wantErr: ErrInvalidInput, wantMsg: "a chat has at most 5 members"},
		{name: "rename with too many members changes nothing", max: 5, size: 4, edit: &ChatEdit{Name: ptr("renamed"), AddMembers: []string{"bob", "carol"}},
			wantErr: ErrInvalidInput, wantMsg: "a chat has at most 5 members"},
		{name: "over the limit: rename", max: 5, size: 7, edit: &ChatEdit{Name: ptr("renamed")},
			wantMembers: 7, wantEvent: true},
		{name: "over the limit: remove", max: 5, size: 7, edit: &ChatEdit{RemoveMembers: []string{"u000"}},
			wantMembers: 6, wantEvent: true},
		{name: "over the limit: swap", max: 5, size: 7, edit: &ChatEdit{AddMembers: []string{"bob"}, RemoveMembers: []string{"u000"}},
			wantMembers: 7, wantEvent: true},
		{name: "over the limit: add", max: 5, size: 7, edit: &ChatEdit{AddMembers: []string{"bob"}},
			wantErr: ErrInvalidInput, wantMsg: "a chat has at most 5 members"},
		{name: "over the limit: add more than removed", max: 5, size: 7, edit: &ChatEdit{AddMembers: []string{"bob", "carol"}, RemoveMembers: []string{"u000"}},
			wantErr: ErrInvalidInput, wantMsg: "a chat has at most 5 members"},
		{name: "default: add up to 1000", size: 999, edit: &ChatEdit{AddMembers: []string{"bob"}},
			wantMembers: 1000, wantEvent: true},
		{name: "default: add over 1000", size: 999, edit: &ChatEdit{AddMembers: []string{"bob", "carol"}},
			wantErr: ErrInvalidInput, wantMsg: "a chat has at most 1000 members"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			f := newFixtureWith(t, Config{MaxMembers: tc.max})
			var (
				got    Chat
				err    error
				before Chat
			)
			if tc.create != nil {
				req := *tc.create
				req.CreatorID, req.CreatorName, req.Name = alice.ID, alice.Username, "big"
				got, err = f.svc.CreateChat(ctx, req)
			} else {
				before = Chat{ID: big, Name: "big", CreatorID: alice.ID, CreatedAt: time.Unix(1000, 0).UTC(),
					Members: sortMembers(append([]Member{alice}, many(tc.size-1)...))}
				f.store.chats[big] = before
				edit := *tc.edit
				edit.ActorID, edit.ChatID = alice.ID, big
				got, err = f.svc.UpdateChat(ctx, edit)
			}
			wantErr(t, err, tc.wantErr, tc.wantMsg)
			if tc.wantErr != nil {
				if re, _ := errors.AsType[*RequestError](err); re.Msg != tc.wantMsg {
					t.Errorf("message %q, want %q", re.Msg, tc.wantMsg)
				}
				if tc.create != nil {
					if n := len(f.store.chats); n != 2 {
						t.Errorf("%d chats stored after a refusal, want 2", n)
					}
				} else if stored, _ := f.store.ChatWithMembers(ctx, big); !gocmp.Equal(before, stored) {
					t.Errorf("the chat changed after a refusal (-before +after):\n%s", gocmp.Diff(before, stored))
				}
				if len(f.events.events) != 0 {
					t.Errorf("events after a refusal: %+v", f.events.events)
				}
				return
			}
			if len(got.Members) != tc.wantMembers {
				t.Errorf("%d members, want %d", len(got.Members), tc.wantMembers)
			}
			if stored, _ := f.store.ChatWithMembers(ctx, got.ID); !gocmp.Equal(got, stored) {
				t.Errorf("stored chat (-returned +stored):\n%s", gocmp.Diff(got, stored))
			}
			if n := len(f.events.events); (n == 1) != tc.wantEvent || n > 1 {
				t.Errorf("%d events, want an event: %v", n, tc.wantEvent)
			}
		})
	}
}

func TestReads(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	other, err := f.svc.CreateChat(ctx, NewChat{CreatorID: carol.ID, CreatorName: "Carol", Name: "apples", Members: []string{"bob"}})
	if err != nil {
		t.Fatal(err)
	}
	general, _ := f.store.ChatWithMembers(ctx, GeneralChatID)

	tests := []struct {
		name      string
		user      int64
		chat      int64
		want      Chat
		wantErr   error
		wantList  []Chat
		wantChats []int64
	}{
		{name: "creator", user: alice.ID, chat: f.team.ID, want: f.team,
			wantList: []Chat{general, f.team}, wantChats: []int64{1, f.team.ID}},
		{name: "member of both", user: bob.ID, chat: f.team.ID, want: f.team,
			wantList: []Chat{general, other, f.team}, wantChats: []int64{1, f.team.ID, other.ID}},
		{name: "non-member", user: dave.ID, chat: f.team.ID, wantErr: ErrNotAMember,
			wantList: []Chat{general}, wantChats: []int64{1}},
		{name: "unknown chat", user: alice.ID, chat: 99, wantErr: ErrChatNotFound,
			wantList: []Chat{general, f.team}, wantChats: []int64{1, f.team.ID}},
		{name: "general has no member list", user: dave.ID, chat: GeneralChatID, want: general,
			wantList: []Chat{general}, wantChats: []int64{1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := f.svc.Get(ctx, tc.user, tc.chat)
			wantErr(t, err, tc.wantErr, "")
			if diff := gocmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Get (-want +got):\n%s", diff)
			}
			if err := f.svc.Access(ctx, tc.user, tc.chat); !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Errorf("Access error = %v, want %v", err, tc.wantErr)
			}
			list, err := f.svc.List(ctx, tc.user)
			if err != nil {
				t.Fatal(err)
			}
			if diff := gocmp.Diff(tc.wantList, list); diff != "" {
				t.Errorf("List (-want +got):\n%s", diff)
			}
			ids, err := f.svc.UserChats(ctx, tc.user)
			if err != nil {
				t.Fatal(err)
			}
			if diff := gocmp.Diff(tc.wantChats, ids); diff != "" {
				t.Errorf("UserChats (-want +got):\n%s", diff)
			}
		})
	}
	if general.Members != nil || !general.Everyone {
		t.Errorf("general = %+v, want everyone and no members", general)
	}
}

// TestMembershipSeenAtOnce: a member removed cannot send from the next send
// on, one added can (no cache between the edit and the send path).
func TestMembershipSeenAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	send := func(u Member, id string) error {
		_, err := f.svc.Send(ctx, Message{ChatID: f.team.ID, SenderID: u.ID, Sender: u.Username, ClientMsgID: id, Text: "hi"})
		return err
	}
	if err := send(bob, "b1"); err != nil {
		t.Fatalf("member's send: %v", err)
	}
	if err := send(carol, "c1"); !errors.Is(err, ErrNotAMember) {
		t.Fatalf("non-member's send: %v, want ErrNotAMember", err)
	}
	if _, err := f.svc.UpdateChat(ctx, ChatEdit{ActorID: alice.ID, ChatID: f.team.ID, AddMembers: []string{"carol"}, RemoveMembers: []string{"bob"}}); err != nil {
		t.Fatal(err)
	}
	if err := send(bob, "b2"); !errors.Is(err, ErrNotAMember) {
		t.Errorf("removed member's send: %v, want ErrNotAMember", err)
	}
	if err := send(carol, "c2"); err != nil {
		t.Errorf("added member's send: %v", err)
	}
}

func TestSend(t *testing.T) {
	t.Parallel()
	store := newMemStore()
	store.chats[2] = Chat{ID: 2, Name: "team", CreatorID: 10, Members: []Member{{ID: 10, Username: "alice"}}}
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
		{name: "NUL in the text", msg: with(func(m *Message) { m.Text = "a\x00b" }), wantErr: ErrInvalidMessage},
		{name: "other control characters", msg: with(func(m *Message) { m.Text = "a\tb\r\nc\x1b" })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pub := &recordingPublisher{}
			svc := NewService(store, pub, nil, newUsers(), &recordingEvents{}, slog.New(slog.NewTextHandler(io.Discard, nil)), Config{})
			_, err := svc.Send(context.Background(), tc.msg)
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

// removals records what a MemberCache was told was removed.
type removals struct {
	mu      sync.Mutex
	removed map[int64][]int64
}

func (r *removals) Check(context.Context, int64, int64) error { return nil }

func (r *removals) Removed(chatID int64, userIDs []int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed[chatID] = append(r.removed[chatID], userIDs...)
}

// lostCommitStore applies an edit and then reports a failure, as when a
// commit's answer is lost.
type lostCommitStore struct{ *memStore }

func (s lostCommitStore) UpdateChat(ctx context.Context, id int64, decide func(Chat) (Change, error)) (Chat, error) {
	if _, err := s.memStore.UpdateChat(ctx, id, decide); err != nil {
		return Chat{}, err
	}
	return Chat{}, errors.New("commit: connection lost")
}

// TestRemovalDropsGrants: a removal drops the removed members' grants
// before the edit is answered, also when the edit's outcome is unknown.
func TestRemovalDropsGrants(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, lost := range []bool{false, true} {
		mem := newMemStore()
		var store Store = mem
		if lost {
			store = lostCommitStore{mem}
		}
		cache := &removals{removed: map[int64][]int64{}}
		svc := NewService(store, &recordingPublisher{}, nil, newUsers(alice, bob, carol), &recordingEvents{},
			slog.New(slog.NewTextHandler(io.Discard, nil)), Config{MemberCache: cache})
		team, err := svc.CreateChat(ctx, NewChat{CreatorID: alice.ID, CreatorName: alice.Username, Name: "Team", Members: []string{"bob", "carol"}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = svc.UpdateChat(ctx, ChatEdit{ActorID: alice.ID, ChatID: team.ID, RemoveMembers: []string{"bob"}})
		if (err != nil) != lost {
			t.Fatalf("lost commit %v: edit error %v", lost, err)
		}
		cache.mu.Lock()
		got := cache.removed[team.ID]
		cache.mu.Unlock()
		if !slices.Equal(got, []int64{bob.ID}) {
			t.Errorf("lost commit %v: grants dropped for %v, want bob (%d)", lost, got, bob.ID)
		}
	}
}

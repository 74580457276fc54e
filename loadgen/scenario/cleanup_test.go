package scenario

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/communications/communications/libs/protocol"
)

// fakeChats is the part of the gateway's chat API that retiring chats
// uses: /me, the chat list, one chat, and PATCH with remove_members (only
// by the creator, at most 100 per request, as the real API).
type fakeChats struct {
	mu      sync.Mutex
	users   map[string]protocol.Member // token -> user
	chats   map[int64]*protocol.Chat
	patches int
}

func (f *fakeChats) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	me, ok := f.users[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	if !ok {
		http.Error(w, `{"error":{"code":"unauthorized"}}`, http.StatusUnauthorized)
		return
	}
	isMember := func(c *protocol.Chat) bool {
		return slices.ContainsFunc(c.Members, func(m protocol.Member) bool { return m.ID == me.ID })
	}
	path := r.URL.Path
	switch {
	case path == "/api/v1/me":
		_ = json.NewEncoder(w).Encode(map[string]any{"user": me})
	case path == "/api/v1/chats" && r.Method == http.MethodGet:
		var list []protocol.Chat
		for _, c := range f.chats {
			if isMember(c) {
				list = append(list, protocol.Chat{ID: c.ID, Name: c.Name, CreatorID: c.CreatorID})
			}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"chats": list})
	case strings.HasPrefix(path, "/api/v1/chats/"):
		id, _ := strconv.ParseInt(strings.TrimPrefix(path, "/api/v1/chats/"), 10, 64)
		c, ok := f.chats[id]
		if !ok {
			http.Error(w, `{"error":{"code":"chat_not_found"}}`, http.StatusNotFound)
			return
		}
		if !isMember(c) {
			http.Error(w, `{"error":{"code":"not_a_member"}}`, http.StatusForbidden)
			return
		}
		if r.Method == http.MethodPatch {
			if c.CreatorID != me.ID {
				http.Error(w, `{"error":{"code":"not_creator"}}`, http.StatusForbidden)
				return
			}
			var in struct {
				RemoveMembers []string `json:"remove_members"`
			}
			if err := json.NewDecoder(r.Body).Decode(&in); err != nil || len(in.RemoveMembers) > 100 {
				http.Error(w, `{"error":{"code":"invalid_input"}}`, http.StatusBadRequest)
				return
			}
			// As the chat service: naming the creator or someone who is
			// not a member refuses the whole request.
			for _, name := range in.RemoveMembers {
				i := slices.IndexFunc(c.Members, func(m protocol.Member) bool { return m.Username == name })
				if i < 0 || c.Members[i].ID == c.CreatorID {
					http.Error(w, `{"error":{"code":"invalid_input"}}`, http.StatusBadRequest)
					return
				}
			}
			f.patches++
			c.Members = slices.DeleteFunc(c.Members, func(m protocol.Member) bool {
				return m.ID != c.CreatorID && slices.Contains(in.RemoveMembers, m.Username)
			})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"chat": c})
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeChats) members(id int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.chats[id].Members)
}

// newFakeChats makes users u000000 to u(n-1) (tokens "t0", "t1", ...) and
// chats, each named and created by the user given, with members 0 to size-1.
func newFakeChats(n int, chats map[int64]struct {
	name    string
	creator int
	size    int
}) *fakeChats {
	f := &fakeChats{users: map[string]protocol.Member{}, chats: map[int64]*protocol.Chat{}}
	all := make([]protocol.Member, n)
	for i := range n {
		all[i] = protocol.Member{ID: int64(i + 1), Username: fmt.Sprintf("u%06d", i)}
		f.users[fmt.Sprintf("t%d", i)] = all[i]
	}
	for id, c := range chats {
		members := slices.Clone(all[:c.size])
		if !slices.ContainsFunc(members, func(m protocol.Member) bool { return m.ID == all[c.creator].ID }) {
			members = append(members, all[c.creator])
		}
		f.chats[id] = &protocol.Chat{ID: id, Name: c.name, CreatorID: all[c.creator].ID, Members: members}
	}
	return f
}

func TestRetireChatsRemovesAllButTheCreatorInChunks(t *testing.T) {
	f := newFakeChats(250, map[int64]struct {
		name    string
		creator int
		size    int
	}{1: {"lg-a-0", 0, 250}, 2: {"lg-a-1", 0, 3}, 3: {"lg-a-2", 1, 3}, 4: {"lg-a-3", 0, 3}})
	srv := httptest.NewServer(f)
	defer srv.Close()
	names := func(from, to int) []string {
		var out []string
		for i := from; i < to; i++ {
			out = append(out, fmt.Sprintf("u%06d", i))
		}
		return out
	}
	var log bytes.Buffer
	a := newAPI([]string{srv.URL})
	// Chat 3 is not u000000's, and chat 4's list names its creator: their
	// retirement fails and is reported. Entry 0 is a chat never created.
	a.retireChats(context.Background(), &log, 4, []runChat{
		{},
		{id: 1, token: "t0", members: names(1, 250)},
		{id: 2, token: "t0", members: names(1, 3)},
		{id: 3, token: "t0", members: names(0, 1)},
		{id: 4, token: "t0", members: names(0, 3)},
	})
	if got := f.members(1); got != 1 {
		t.Errorf("chat 1 has %d members after retiring, want its creator only", got)
	}
	if got := f.members(2); got != 1 {
		t.Errorf("chat 2 has %d members after retiring, want 1", got)
	}
	if got := f.members(3); got != 3 {
		t.Errorf("chat 3 (someone else's) has %d members, want 3", got)
	}
	if got := f.members(4); got != 3 {
		t.Errorf("chat 4 (a list with its creator) has %d members, want 3", got)
	}
	f.mu.Lock()
	patches := f.patches
	f.mu.Unlock()
	if patches != 4 { // 249 members: 100 + 100 + 49; then 2
		t.Errorf("%d PATCH requests done, want 4", patches)
	}
	if !strings.Contains(log.String(), "2 of 4 chats of the run not retired") {
		t.Errorf("log does not report the failure: %q", log.String())
	}
}

func TestCleanupRetiresOnlyTheRunsChatsOfCachedUsers(t *testing.T) {
	f := newFakeChats(6, map[int64]struct {
		name    string
		creator int
		size    int
	}{
		1: {"lg-x-0", 0, 6},         // a run's chat: retired by u000000
		2: {"lg-history-100", 0, 6}, // the history scenario's: kept
		3: {"team", 0, 6},           // not the load generator's: kept
		4: {"lg-x-1", 5, 6},         // its creator has no cached token: kept
		5: {"lg-s-0", 2, 3},         // retired by u000002
	})
	srv := httptest.NewServer(f)
	defer srv.Close()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.json")
	cached := map[string]string{}
	for i := range 5 { // u000005 is not cached
		cached[fmt.Sprintf("u%06d", i)] = fmt.Sprintf("t%d", i)
	}
	b, _ := json.Marshal(cached)
	if err := os.WriteFile(tokens, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	rep, err := Cleanup(context.Background(), CleanupConfig{Target: Target{Gateways: []string{srv.URL}}, UserPrefix: "u", Users: 6, TokenFile: tokens, Setup: 3, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]int{1: 1, 2: 6, 3: 6, 4: 6, 5: 1}
	for id, n := range want {
		if got := f.members(id); got != n {
			t.Errorf("chat %d has %d members, want %d", id, got, n)
		}
	}
	if rep.Users != 5 || rep.Chats != 2 || rep.Removed != 7 || rep.Failures != 0 {
		t.Errorf("report %+v, want 5 users, 2 chats, 7 members removed, no failures", *rep)
	}
}

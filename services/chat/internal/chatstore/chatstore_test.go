package chatstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/chat/internal/chats"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// openPool returns a pool on a fresh database, migrated with fsys.
func openPool(t *testing.T, fsys fs.FS) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool, err := pgdb.Open(ctx, testenv.Postgres(t), 8, noop.NewTracerProvider())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	migrate(t, pool, fsys)
	return pool
}

func migrate(t *testing.T, pool *pgxpool.Pool, fsys fs.FS) {
	t.Helper()
	if err := pgdb.Migrate(context.Background(), pool, fsys, MigrationTable, telemetry.NewLogger(io.Discard, 0)); err != nil {
		t.Fatal(err)
	}
}

// ignoreTime leaves creation times out of comparisons.
var ignoreTime = cmpopts.IgnoreFields(chats.Chat{}, "CreatedAt")

// TestMigrations: memberships stored before usernames were kept still
// count after migration 00002, with an empty username; migrating again is
// harmless (every replica migrates at start).
func TestMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	first, err := fs.ReadFile(Migrations(), "00001_chats.sql")
	if err != nil {
		t.Fatal(err)
	}
	pool := openPool(t, fstest.MapFS{"00001_chats.sql": {Data: first}})
	var old int64
	if err := pool.QueryRow(ctx, `INSERT INTO chats (name, creator_id) VALUES ('old', 10) RETURNING id`).Scan(&old); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO chat_members (chat_id, user_id) VALUES ($1, 10), ($1, 11)`, old); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		migrate(t, pool, Migrations())
	}
	s := New(pool)
	for _, user := range []int64{10, 11} {
		if ok, err := s.IsMember(ctx, old, user); err != nil || !ok {
			t.Errorf("user %d member of the old chat = %v, %v; want true", user, ok, err)
		}
	}
	got, err := s.ChatWithMembers(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	want := chats.Chat{ID: old, Name: "old", CreatorID: 10, Members: []chats.Member{{ID: 10}, {ID: 11}}}
	if diff := cmp.Diff(want, got, ignoreTime); diff != "" {
		t.Errorf("old chat (-want +got):\n%s", diff)
	}
}

func TestStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := New(openPool(t, Migrations()))
	alice := chats.Member{ID: 10, Username: "alice"}
	bob := chats.Member{ID: 11, Username: "Bob"}
	carol := chats.Member{ID: 12, Username: "carol"}
	dave := chats.Member{ID: 13, Username: "dave"}

	general, err := s.Chat(ctx, chats.GeneralChatID)
	if err != nil {
		t.Fatal(err)
	}
	wantGeneral := chats.Chat{ID: 1, Name: "general", Description: "Everyone is here.", Everyone: true}
	if diff := cmp.Diff(wantGeneral, general, ignoreTime); diff != "" {
		t.Errorf("general (-want +got):\n%s", diff)
	}
	if _, err := s.Chat(ctx, 999); !errors.Is(err, chats.ErrChatNotFound) {
		t.Errorf("unknown chat error = %v, want ErrChatNotFound", err)
	}
	if _, err := s.ChatWithMembers(ctx, 999); !errors.Is(err, chats.ErrChatNotFound) {
		t.Errorf("unknown chat with members error = %v, want ErrChatNotFound", err)
	}

	// Members come back ordered by username regardless of letter case.
	team, err := s.CreateChat(ctx, chats.Chat{Name: "team", Description: "ours", CreatorID: alice.ID, Members: []chats.Member{alice, carol, bob}})
	if err != nil {
		t.Fatal(err)
	}
	wantTeam := chats.Chat{ID: team.ID, Name: "team", Description: "ours", CreatorID: alice.ID, Members: []chats.Member{alice, bob, carol}}
	if diff := cmp.Diff(wantTeam, team, ignoreTime); diff != "" {
		t.Errorf("created (-want +got):\n%s", diff)
	}
	if team.CreatedAt.IsZero() || team.CreatedAt.Location().String() != "UTC" {
		t.Errorf("created_at = %v, want a UTC time", team.CreatedAt)
	}
	if got, err := s.ChatWithMembers(ctx, team.ID); err != nil || !cmp.Equal(team, got) {
		t.Errorf("read back %+v, %v; want %+v", got, err, team)
	}
	apples, err := s.CreateChat(ctx, chats.Chat{Name: "Apples", CreatorID: bob.ID, Members: []chats.Member{bob}})
	if err != nil {
		t.Fatal(err)
	}

	for _, name := range []string{"TEAM", "Team", "GENERAL"} {
		if _, err := s.CreateChat(ctx, chats.Chat{Name: name, CreatorID: dave.ID, Members: []chats.Member{dave}}); !errors.Is(err, chats.ErrNameTaken) {
			t.Errorf("create %q: error %v, want ErrNameTaken", name, err)
		}
	}

	generalRead, err := s.ChatWithMembers(ctx, chats.GeneralChatID)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		user      int64
		wantChats []int64
		wantList  []chats.Chat
		inTeam    bool
	}{
		{user: alice.ID, wantChats: []int64{1, team.ID}, wantList: []chats.Chat{generalRead, team}, inTeam: true},
		{user: bob.ID, wantChats: []int64{1, team.ID, apples.ID}, wantList: []chats.Chat{generalRead, apples, team}, inTeam: true},
		{user: dave.ID, wantChats: []int64{1}, wantList: []chats.Chat{generalRead}},
	}
	for _, tc := range tests {
		got, err := s.UserChats(ctx, tc.user)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.wantChats, got); diff != "" {
			t.Errorf("user %d chats (-want +got):\n%s", tc.user, diff)
		}
		list, err := s.ListChats(ctx, tc.user)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.wantList, list); diff != "" {
			t.Errorf("user %d chat list (-want +got):\n%s", tc.user, diff)
		}
		in, err := s.IsMember(ctx, team.ID, tc.user)
		if err != nil {
			t.Fatal(err)
		}
		if in != tc.inTeam {
			t.Errorf("user %d member of team = %v, want %v", tc.user, in, tc.inTeam)
		}
		// InChat: the team as IsMember says; general for everyone.
		if in, err := s.InChat(ctx, team.ID, tc.user); err != nil || in != tc.inTeam {
			t.Errorf("user %d in team = %v, %v; want %v", tc.user, in, err, tc.inTeam)
		}
		if in, err := s.InChat(ctx, 1, tc.user); err != nil || !in {
			t.Errorf("user %d in general = %v, %v; want true", tc.user, in, err)
		}
	}
	if _, err := s.InChat(ctx, 999999, alice.ID); !errors.Is(err, chats.ErrChatNotFound) {
		t.Errorf("in a missing chat: %v, want ErrChatNotFound", err)
	}

	t.Run("update", func(t *testing.T) {
		name, desc := "Dream Team", "still ours"
		got, err := s.UpdateChat(ctx, team.ID, func(cur chats.Chat) (chats.Change, error) {
			if diff := cmp.Diff(team, cur); diff != "" {
				t.Errorf("decide saw (-want +got):\n%s", diff)
			}
			// Adding a member again keeps the row as it is.
			return chats.Change{Name: &name, Description: &desc, Add: []chats.Member{dave, {ID: bob.ID, Username: "other"}}, Remove: []int64{carol.ID}}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := chats.Chat{ID: team.ID, Name: name, Description: desc, CreatorID: alice.ID, CreatedAt: team.CreatedAt,
			Members: []chats.Member{alice, bob, dave}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("updated (-want +got):\n%s", diff)
		}
		team = got
	})
	t.Run("no change", func(t *testing.T) {
		got, err := s.UpdateChat(ctx, team.ID, func(chats.Chat) (chats.Change, error) { return chats.Change{}, nil })
		if err != nil || !cmp.Equal(team, got) {
			t.Errorf("empty change gave %+v, %v; want %+v", got, err, team)
		}
	})
	t.Run("decide refuses", func(t *testing.T) {
		refusal := errors.New("no")
		_, err := s.UpdateChat(ctx, team.ID, func(chats.Chat) (chats.Change, error) { return chats.Change{Remove: []int64{bob.ID}}, refusal })
		if !errors.Is(err, refusal) {
			t.Errorf("error = %v, want the refusal", err)
		}
		if got, _ := s.ChatWithMembers(ctx, team.ID); !cmp.Equal(team, got) {
			t.Errorf("chat changed after a refusal: %+v", got)
		}
	})
	t.Run("rename to a taken name", func(t *testing.T) {
		for _, taken := range []string{"apples", "General"} {
			_, err := s.UpdateChat(ctx, team.ID, func(chats.Chat) (chats.Change, error) {
				return chats.Change{Name: &taken, Add: []chats.Member{carol}}, nil
			})
			if !errors.Is(err, chats.ErrNameTaken) {
				t.Errorf("rename to %q: error %v, want ErrNameTaken", taken, err)
			}
		}
		if got, _ := s.ChatWithMembers(ctx, team.ID); !cmp.Equal(team, got) {
			t.Errorf("chat changed after a conflict: %+v", got)
		}
		// Its own name in another letter case is no conflict.
		upper := strings.ToUpper(team.Name)
		if _, err := s.UpdateChat(ctx, team.ID, func(chats.Chat) (chats.Change, error) { return chats.Change{Name: &upper}, nil }); err != nil {
			t.Errorf("rename to %q: %v", upper, err)
		}
	})
	t.Run("unknown chat", func(t *testing.T) {
		_, err := s.UpdateChat(ctx, 999, func(chats.Chat) (chats.Change, error) {
			t.Error("decide called for an unknown chat")
			return chats.Change{}, nil
		})
		if !errors.Is(err, chats.ErrChatNotFound) {
			t.Errorf("error = %v, want ErrChatNotFound", err)
		}
	})
}

// TestConcurrentCreates: of concurrent creates of one name, in any letter
// case, exactly one wins.
func TestConcurrentCreates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := New(openPool(t, Migrations()))
	const n = 8
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		won  int
		errs []error
	)
	for i := range n {
		wg.Go(func() {
			name := "Race"
			if i%2 == 1 {
				name = "rACE"
			}
			creator := chats.Member{ID: int64(100 + i), Username: fmt.Sprint("user", i)}
			_, err := s.CreateChat(ctx, chats.Chat{Name: name, CreatorID: creator.ID, Members: []chats.Member{creator}})
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				won++
			} else if !errors.Is(err, chats.ErrNameTaken) {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if won != 1 || len(errs) > 0 {
		t.Fatalf("%d creates won, want 1; other errors: %v", won, errs)
	}
	// The losers left nothing behind: one chat besides general, one member.
	var chatsN, membersN int
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM chats), (SELECT count(*) FROM chat_members)`).Scan(&chatsN, &membersN); err != nil {
		t.Fatal(err)
	}
	if chatsN != 2 || membersN != 1 {
		t.Errorf("%d chats and %d memberships, want 2 and 1", chatsN, membersN)
	}
}

// TestConcurrentUpdates: edits of one chat take turns, each deciding on the
// state the previous one left (no lost update).
func TestConcurrentUpdates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := New(openPool(t, Migrations()))
	creator := chats.Member{ID: 1, Username: "creator"}
	c, err := s.CreateChat(ctx, chats.Chat{Name: "busy", CreatorID: creator.ID, Members: []chats.Member{creator}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 10
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			_, err := s.UpdateChat(ctx, c.ID, func(cur chats.Chat) (chats.Change, error) {
				desc := cur.Description + "x"
				return chats.Change{Description: &desc, Add: []chats.Member{{ID: int64(100 + i), Username: fmt.Sprintf("u%02d", i)}}}, nil
			})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ChatWithMembers(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Description != strings.Repeat("x", n) || len(got.Members) != n+1 {
		t.Errorf("after %d concurrent edits: description %q and %d members, want %d x and %d members", n, got.Description, len(got.Members), n, n+1)
	}
}

// directory resolves usernames as the auth service does, from a fixed map
// of lower-cased names.
type directory map[string]chats.Member

func (d directory) Lookup(_ context.Context, names []string) ([]chats.Member, error) {
	out := make([]chats.Member, len(names))
	for i, n := range names {
		m, ok := d[strings.ToLower(n)]
		if !ok {
			return nil, &chats.RequestError{Err: chats.ErrUnknownUser, Msg: fmt.Sprintf("unknown user %q", n)}
		}
		out[i] = m
	}
	return out, nil
}

type noEvents struct{}

func (noEvents) ChatChanged(context.Context, chats.Event) error { return nil }

// TestMemberLimit: with the domain on this store, a chat never has more
// than Config.MaxMembers members: a create over the limit stores nothing,
// and of concurrent edits each adding a member, exactly as many pass as
// there is room for, since each decides on the members it holds locked.
func TestMemberLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const limit, editors = 5, 12
	s := New(openPool(t, Migrations()))
	creator := chats.Member{ID: 1, Username: "creator"}
	dir := directory{"creator": creator}
	var users []string
	for i := range editors {
		u := chats.Member{ID: int64(100 + i), Username: fmt.Sprintf("u%02d", i)}
		dir[u.Username] = u
		users = append(users, u.Username)
	}
	svc := chats.NewService(s, nil, nil, dir, noEvents{}, telemetry.NewLogger(io.Discard, 0), chats.Config{MaxMembers: limit})
	countMembers := func(chatID int64) int {
		t.Helper()
		var n int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM chat_members WHERE chat_id = $1`, chatID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	_, err := svc.CreateChat(ctx, chats.NewChat{CreatorID: creator.ID, CreatorName: creator.Username, Name: "too big", Members: users[:limit]})
	if re, ok := errors.AsType[*chats.RequestError](err); !ok || !errors.Is(err, chats.ErrInvalidInput) || re.Msg != "a chat has at most 5 members" {
		t.Fatalf("create of %d members: error %v, want ErrInvalidInput %q", limit+1, err, "a chat has at most 5 members")
	}
	var stored int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM chats WHERE NOT everyone`).Scan(&stored); err != nil || stored != 0 {
		t.Fatalf("%d chats stored after a refused create (%v), want 0", stored, err)
	}

	c, err := svc.CreateChat(ctx, chats.NewChat{CreatorID: creator.ID, CreatorName: creator.Username, Name: "busy"})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		passed  int
		refused int
		others  []error
	)
	for _, u := range users {
		wg.Go(func() {
			_, err := svc.UpdateChat(ctx, chats.ChatEdit{ActorID: creator.ID, ChatID: c.ID, AddMembers: []string{u}})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				passed++
			case errors.Is(err, chats.ErrInvalidInput):
				refused++
			default:
				others = append(others, err)
			}
		})
	}
	wg.Wait()
	if len(others) > 0 {
		t.Fatalf("unexpected errors: %v", others)
	}
	if passed != limit-1 || refused != editors-limit+1 {
		t.Errorf("%d concurrent adds passed and %d were refused, want %d and %d", passed, refused, limit-1, editors-limit+1)
	}
	if n := countMembers(c.ID); n != limit {
		t.Errorf("%d members after %d concurrent adds, want %d", n, editors, limit)
	}
	got, err := svc.Get(ctx, creator.ID, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Members) != limit {
		t.Errorf("chat read back with %d members, want %d", len(got.Members), limit)
	}
}

// TestListChatsPlanWithManyChats: with thousands of chats a user's chat
// list is planned for the user's chats, not for a share of all chats: the
// estimate stays far below jit_above_cost, past which PostgreSQL compiled
// the query on every call (about 12 ms each, with 2,300 chats).
func TestListChatsPlanWithManyChats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := openPool(t, Migrations())
	_, err := pool.Exec(ctx, `
		INSERT INTO chats (name, creator_id) SELECT 'chat-' || i, 1 FROM generate_series(1, 3000) i;
		INSERT INTO chat_members (chat_id, user_id, username)
		    SELECT c.id, u, 'user-' || u FROM chats c, generate_series(1, 50) u WHERE NOT c.everyone AND c.id % 100 < 2;
		ANALYZE chats; ANALYZE chat_members`)
	if err != nil {
		t.Fatal(err)
	}
	var plan []struct {
		Plan struct {
			TotalCost float64 `json:"Total Cost"`
			PlanRows  float64 `json:"Plan Rows"`
		} `json:"Plan"`
	}
	if err := pool.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+selectChats+listChatsWhere, int64(7)).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	var jitAbove float64
	if err := pool.QueryRow(ctx, "SELECT current_setting('jit_above_cost')::float8").Scan(&jitAbove); err != nil {
		t.Fatal(err)
	}
	if len(plan) != 1 || plan[0].Plan.PlanRows > 200 || plan[0].Plan.TotalCost >= jitAbove/10 {
		t.Errorf("plan of a user's chats among 3,000: %+v; want about the user's 60 chats, cost well below jit_above_cost %.0f", plan, jitAbove)
	}
	got, err := New(pool).ListChats(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 61 || !got[0].Everyone || len(got[1].Members) != 50 {
		t.Errorf("user 7 has %d chats (first everyone: %v), want general and 60 of 50 members", len(got), len(got) > 0 && got[0].Everyone)
	}
}

// TestChatListsUseIndexes: a user's chats are found through indexes, not
// by reading every chat: the "everyone" chats through their partial index,
// the memberships through the user's index. Every connection's set-up and
// every chat list runs these, so a scan of chats would slow each of them as
// chats accumulate (most of PostgreSQL's time in a reconnect storm).
func TestChatListsUseIndexes(t *testing.T) {
	// 5,000 chats, each user in two of them.
	t.Parallel()
	ctx := context.Background()
	pool := openPool(t, Migrations())
	if _, err := pool.Exec(ctx, `
		INSERT INTO chats (name, creator_id) SELECT 'chat ' || s, 1 + s % 2500 FROM generate_series(1, 5000) AS s;
		INSERT INTO chat_members (chat_id, user_id, username) SELECT id, 1 + id % 2500, 'user' || (1 + id % 2500) FROM chats WHERE NOT everyone;
		ANALYZE chats; ANALYZE chat_members`); err != nil {
		t.Fatal(err)
	}
	for name, sql := range map[string]string{"user chats": userChatsSQL, "chat list": selectChats + listChatsWhere} {
		if plan := testenv.Plan(t, pool, sql, int64(7)); !strings.Contains(plan, "chats_everyone") || strings.Contains(plan, "Seq Scan on chats") {
			t.Errorf("%s does not find the everyone chats through chats_everyone:\n%s", name, plan)
		}
	}
}

package chatstore

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/pgdb"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/chat/internal/chats"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := pgdb.Open(ctx, testenv.Postgres(t), 4, noop.NewTracerProvider())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	log := telemetry.NewLogger(io.Discard, 0)
	// Migrating twice is harmless (every replica migrates at start).
	for range 2 {
		if err := pgdb.Migrate(ctx, pool, Migrations(), MigrationTable, log); err != nil {
			t.Fatal(err)
		}
	}
	var team int64
	if err := pool.QueryRow(ctx, `INSERT INTO chats (name, creator_id) VALUES ('team', 10) RETURNING id`).Scan(&team); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO chat_members (chat_id, user_id) VALUES ($1, 10), ($1, 11)`, team); err != nil {
		t.Fatal(err)
	}
	s := New(pool)

	general, err := s.Chat(ctx, chats.GeneralChatID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(chats.Chat{ID: 1, Name: "general", Everyone: true}, general); diff != "" {
		t.Errorf("general (-want +got):\n%s", diff)
	}
	if _, err := s.Chat(ctx, 999); !errors.Is(err, chats.ErrChatNotFound) {
		t.Errorf("unknown chat error = %v, want ErrChatNotFound", err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO chats (name) VALUES ('TEAM')`); err == nil {
		t.Error("a chat name differing only in letter case was accepted")
	}

	tests := []struct {
		user      int64
		wantChats []int64
		inTeam    bool
	}{
		{user: 10, wantChats: []int64{1, team}, inTeam: true},
		{user: 11, wantChats: []int64{1, team}, inTeam: true},
		{user: 12, wantChats: []int64{1}, inTeam: false},
	}
	for _, tc := range tests {
		got, err := s.UserChats(ctx, tc.user)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.wantChats, got); diff != "" {
			t.Errorf("user %d chats (-want +got):\n%s", tc.user, diff)
		}
		in, err := s.IsMember(ctx, team, tc.user)
		if err != nil {
			t.Fatal(err)
		}
		if in != tc.inTeam {
			t.Errorf("user %d member of team = %v, want %v", tc.user, in, tc.inTeam)
		}
	}
}

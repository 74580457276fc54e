package userdir_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/chat/internal/chats"
	"github.com/communications/communications/services/chat/internal/userdir"
	"github.com/communications/communications/services/chat/internal/userdir/userdirtest"
)

func TestLookup(t *testing.T) {
	t.Parallel()
	nc := testenv.NATSConn(t)
	served, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	unserved, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	userdirtest.Serve(t, nc, served, busapi.User{ID: 1, Username: "alice"}, busapi.User{ID: 2, Username: "Bob"})
	client := natsbus.NewClient(nc, noop.NewTracerProvider())

	tests := []struct {
		name    string
		subj    subjects.Subjects
		names   []string
		want    []chats.Member
		wantErr error
		wantMsg string
	}{
		{name: "in request order, any case", subj: served, names: []string{"bob", "ALICE"},
			want: []chats.Member{{ID: 2, Username: "Bob"}, {ID: 1, Username: "alice"}}},
		{name: "unknown user", subj: served, names: []string{"alice", "zed"}, wantErr: chats.ErrUnknownUser, wantMsg: `unknown user "zed"`},
		{name: "auth not answering", subj: unserved, names: []string{"alice"}, wantErr: natsbus.ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := userdir.New(client, tc.subj).Lookup(ctx, tc.names)
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			if tc.wantMsg != "" {
				if re, ok := errors.AsType[*chats.RequestError](err); !ok || re.Msg != tc.wantMsg {
					t.Errorf("error %v: want a RequestError with message %q", err, tc.wantMsg)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("users (-want +got):\n%s", diff)
			}
		})
	}
}

package natsapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/grantcache"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/chat/internal/chats"
	"github.com/communications/communications/services/chat/internal/chatstore"
	"github.com/communications/communications/services/chat/internal/msgstream"
	"github.com/communications/communications/services/chat/internal/userdir"
	"github.com/communications/communications/services/chat/internal/userdir/userdirtest"
)

// countingStore counts the membership reads of a send.
type countingStore struct {
	chats.Store
	inChat atomic.Int64
}

func (s *countingStore) InChat(ctx context.Context, chatID, userID int64) (bool, error) {
	s.inChat.Add(1)
	return s.Store.InChat(ctx, chatID, userID)
}

// replica is one chat service replica as chatsvc wires it: its own NATS
// connection, store and member cache, on the shared database and stream.
type replica struct {
	svc   *chats.Service
	store *countingStore
}

// TestMemberCacheAcrossReplicas: with two replicas, each remembering the
// memberships it granted, a member's repeated sends read the store once;
// a member removed through one replica is refused there from the next send
// on (without its event) and by the other once the chat event arrives,
// while the access check asked by the history service reads the store; a
// member added sends through the other replica at once.
func TestMemberCacheAcrossReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns := testenv.NATS(t)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	log := telemetry.NewLogger(io.Discard, 0)
	pool := migratedPool(t, log)
	connect := connector(t, ns.ClientURL())
	userdirtest.Serve(t, connect("auth"), subj, alice, bob, carol)
	tp := sdktrace.NewTracerProvider()

	// subscribed: whether the replica hears the chat events (replica a,
	// which makes the edits, does not: its own removal must take effect
	// without its event).
	newReplica := func(name string, subscribed bool) *replica {
		nc := connect(name)
		stream, err := msgstream.Ensure(ctx, nc, subj, msgstream.Config{})
		if err != nil {
			t.Fatal(err)
		}
		store := &countingStore{Store: chatstore.New(pool)}
		cache := grantcache.New(grantcache.CheckerFunc(chats.StoreChecker(store)), grantcache.Options{
			Size: 1000, TTL: time.Hour, Timeout: 5 * time.Second, IsRefusal: chats.IsRefusal,
		})
		if subscribed {
			if err := cache.Subscribe(nc, subj.ChatEvents()); err != nil {
				t.Fatal(err)
			}
		}
		users := userdir.New(natsbus.NewClient(nc, tp), subj)
		svc := chats.NewService(store, stream, nil, users, NewEvents(nc, subj), log, chats.Config{MemberCache: cache})
		return &replica{svc: svc, store: store}
	}
	a, b := newReplica("chat a", false), newReplica("chat b", true)
	// deaf never hears an event (as if all were lost): its grants stay.
	deaf := newReplica("chat c", false)

	team, err := a.svc.CreateChat(ctx, chats.NewChat{CreatorID: alice.ID, CreatorName: alice.Username, Name: "team", Members: []string{"bob"}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	send := func(r *replica, from busapi.User) error {
		n++
		_, err := r.svc.Send(ctx, chats.Message{
			ChatID: team.ID, SenderID: from.ID, Sender: from.Username, Kind: protocol.KindMessage,
			ClientMsgID: fmt.Sprintf("m-%d", n), Text: "hello",
		})
		return err
	}

	// Bob's sends through each replica: one membership read per replica.
	for _, r := range []*replica{a, b, a, b, b, deaf} {
		if err := send(r, bob); err != nil {
			t.Fatalf("member's send: %v", err)
		}
	}
	if ga, gb := a.store.inChat.Load(), b.store.inChat.Load(); ga != 1 || gb != 1 {
		t.Errorf("membership reads: replica a %d, b %d; want 1 each (then remembered)", ga, gb)
	}

	// Carol is refused before she is added (and the refusal is not kept).
	if err := send(b, carol); !errors.Is(err, chats.ErrNotAMember) {
		t.Fatalf("non-member's send: %v, want ErrNotAMember", err)
	}

	// Alice removes bob and adds carol through replica a.
	if _, err := a.svc.UpdateChat(ctx, chats.ChatEdit{ActorID: alice.ID, ChatID: team.ID, RemoveMembers: []string{"bob"}, AddMembers: []string{"carol"}}); err != nil {
		t.Fatal(err)
	}
	// Replica a refuses bob from the next send on.
	if err := send(a, bob); !errors.Is(err, chats.ErrNotAMember) {
		t.Errorf("removed member's send through the replica that removed him: %v, want ErrNotAMember", err)
	}
	// Carol is let in through replica b at once: it never remembered her
	// refusal.
	if err := send(b, carol); err != nil {
		t.Errorf("added member's send through the other replica: %v", err)
	}
	// The history service's access check reads the store on every replica,
	// also on one whose cache still holds bob's grant.
	if err := send(deaf, bob); err != nil {
		t.Fatalf("the replica that never hears events still lets bob send (%v): the test needs its grant", err)
	}
	if err := deaf.svc.Access(ctx, bob.ID, team.ID); !errors.Is(err, chats.ErrNotAMember) {
		t.Errorf("access check of the removed member on a replica holding his grant: %v, want ErrNotAMember", err)
	}
	// Replica b refuses bob's sends once the chat event arrives (its cache
	// holds his grant for an hour otherwise).
	var last error
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
		last = send(b, bob)
		return errors.Is(last, chats.ErrNotAMember)
	}, func() string { return fmt.Sprintf("replica b refuses the removed member (last: %v)", last) })
}

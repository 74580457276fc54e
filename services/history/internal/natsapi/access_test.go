package natsapi

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
)

// members is an Access over a set of memberships that counts its checks.
type members struct {
	mu     sync.Mutex
	in     map[membership]bool
	checks int
}

func (m *members) CanRead(_ context.Context, userID, chatID int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checks++
	if !m.in[membership{userID, chatID}] {
		return busapi.Errorf(protocol.CodeNotAMember, "not a member")
	}
	return nil
}

func (m *members) set(userID, chatID int64, in bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.in[membership{userID, chatID}] = in
}

func (m *members) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.checks
}

func TestCachedAccess(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	inner := &members{in: map[membership]bool{}}
	a, err := NewCachedAccess(nc, subj, inner, 100, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// A refusal is not remembered: a user added reads at once.
	if err := a.CanRead(ctx, 1, 10); busapi.CodeOf(err) != protocol.CodeNotAMember {
		t.Fatalf("non-member: %v, want not_a_member", err)
	}
	inner.set(1, 10, true)
	inner.set(2, 10, true)
	for range 3 {
		if err := a.CanRead(ctx, 1, 10); err != nil {
			t.Fatalf("member: %v", err)
		}
	}
	if err := a.CanRead(ctx, 2, 10); err != nil {
		t.Fatalf("member: %v", err)
	}
	if got := inner.count(); got != 3 {
		t.Errorf("chat service asked %d times, want 3 (refusal, then once per member)", got)
	}

	// The chat service removes user 1 and says so.
	inner.set(1, 10, false)
	data, err := json.Marshal(busapi.ChatEvent{Kind: "members", Chat: busapi.Chat{ID: 10}, Removed: []int64{1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subj.ChatEvents(), data); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		return busapi.CodeOf(a.CanRead(ctx, 1, 10)) == protocol.CodeNotAMember
	}, "removed member refused")
	before := inner.count()
	if err := a.CanRead(ctx, 2, 10); err != nil {
		t.Fatalf("remaining member: %v", err)
	}
	if got := inner.count(); got != before {
		t.Errorf("remaining member's access asked the chat service again (%d checks, want %d)", got, before)
	}
}

func TestCachedAccessTTL(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	subj, err := subjects.New(testenv.SubjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	inner := &members{in: map[membership]bool{{1, 10}: true}}
	a, err := NewCachedAccess(nc, subj, inner, 100, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := a.CanRead(ctx, 1, 10); err != nil {
		t.Fatal(err)
	}
	// Removed without an event (one missed): refused once the ttl lapses.
	inner.set(1, 10, false)
	testenv.Eventually(t, 5*time.Second, func() bool {
		return busapi.CodeOf(a.CanRead(ctx, 1, 10)) == protocol.CodeNotAMember
	}, "removed member refused after the ttl")
}

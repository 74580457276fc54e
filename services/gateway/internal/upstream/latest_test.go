package upstream

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
)

// historyLatestStub answers latest-sequence requests on a real NATS server
// as the history service would, refusing more than busapi.MaxLatestChats
// chats and any request holding the chat id refuse; even chat ids have
// messages (their newest sequence is the id), odd ones none. It returns the
// size of every request it got.
func historyLatestStub(t *testing.T, refuse int64) (*Client, func() []int) {
	t.Helper()
	_, srv, subj, client := natsStub(t)
	var (
		mu    sync.Mutex
		sizes []int
	)
	_, err := natsbus.Handle(context.Background(), srv, subj.HistoryLatest(), "history",
		func(_ context.Context, req busapi.LatestRequest) (busapi.Latest, error) {
			mu.Lock()
			sizes = append(sizes, len(req.ChatIDs))
			mu.Unlock()
			if len(req.ChatIDs) > busapi.MaxLatestChats {
				return busapi.Latest{}, busapi.Errorf(protocol.CodeInvalidInput, "at most "+strconv.Itoa(busapi.MaxLatestChats)+" chats")
			}
			out := busapi.Latest{Seqs: map[string]int64{}}
			for _, id := range req.ChatIDs {
				if id == refuse {
					return busapi.Latest{}, busapi.Errorf(protocol.CodeUnavailable, "refused")
				}
				if id%2 == 0 {
					out.Seqs[strconv.FormatInt(id, 10)] = id
				}
			}
			return out, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	return client, func() []int {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(sizes)
	}
}

// TestLatestSplitsManyChats: a gateway whose connections are in more chats
// together than one request may carry asks in parts and gets every answer.
func TestLatestSplitsManyChats(t *testing.T) {
	c, sizes := historyLatestStub(t, -1)
	n := 2*busapi.MaxLatestChats + 5001
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	seqs, err := c.Latest(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(seqs), n/2; got != want {
		t.Errorf("%d chats with a sequence, want %d", got, want)
	}
	for _, id := range []int64{2, busapi.MaxLatestChats, busapi.MaxLatestChats + 2, int64(n - 1)} {
		if seqs[strconv.FormatInt(id, 10)] != id {
			t.Errorf("chat %d: sequence %d, want %d", id, seqs[strconv.FormatInt(id, 10)], id)
		}
	}
	if got := sizes(); !slices.Equal(got, []int{busapi.MaxLatestChats, busapi.MaxLatestChats, 5001}) {
		t.Errorf("request sizes %v", got)
	}
}

// TestLatestFailsWhenAPartFails: no partial answer is taken for the whole.
func TestLatestFailsWhenAPartFails(t *testing.T) {
	c, _ := historyLatestStub(t, busapi.MaxLatestChats+7)
	ids := make([]int64, busapi.MaxLatestChats+10)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	if seqs, err := c.Latest(context.Background(), ids); err == nil {
		t.Fatalf("no error; %d sequences", len(seqs))
	}
}

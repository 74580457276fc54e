package ws

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
)

// resumePage is how many messages one history read of a replay fetches.
const resumePage = 100

// maxReplayRounds bounds how often a replay goes back to history across a
// hole in the messages that arrived while it was sending, and maxHeldRounds
// how often it sends the messages held meanwhile; a chat busier than that
// closes the connection as a slow consumer (it then resumes).
const (
	maxReplayRounds = 100
	maxHeldRounds   = 10000
)

// chatPosition is what a connection has delivered of one chat.
type chatPosition struct {
	// known: last is a real starting point (a message was delivered, or a
	// replay reached it), so a later sequence above last+1 is a gap.
	known bool
	last  int64 // the highest sequence delivered
	// catchingUp: a replay (resume or gap fill) is sending history; live
	// messages wait in held and go out after it.
	catchingUp bool
	held       []heldMessage
}

type heldMessage struct {
	seq   int64
	event []byte
}

// DeliverMessage delivers a stored message of a chat unless the connection
// already has it: one sequence number is delivered once. During a replay of
// the chat it is held back. A live message above the next expected sequence
// reveals a gap (pub/sub is at-most-once): the missing messages are read
// from history and sent first. A duplicate (a retried send published again
// for its sender) is delivered if unseen; it moves a known position like a
// live message (it is the same message), but never sets an unknown one.
// The hub calls Flush after it (see deliverDeferred).
func (c *Conn) DeliverMessage(chatID, seq int64, duplicate bool, event []byte) {
	c.posMu.Lock()
	pos := c.positions[chatID]
	if pos == nil {
		pos = &chatPosition{}
		if c.positions == nil {
			c.positions = map[int64]*chatPosition{}
		}
		c.positions[chatID] = pos
	}
	switch {
	case pos.catchingUp:
		if c.heldTotal >= c.srv.cfg.SendQueue {
			c.posMu.Unlock()
			c.slow()
			return
		}
		pos.held = append(pos.held, heldMessage{seq: seq, event: event})
		c.heldTotal++
		c.posMu.Unlock()
		return
	case seq <= pos.last:
		c.posMu.Unlock()
		return
	case duplicate && !pos.known:
		// With no position yet, a retried (old) message must not become
		// one: the next live message would look like a gap back to it.
		c.posMu.Unlock()
		c.deliverDeferred(event)
		return
	case pos.known && seq > pos.last+1 && c.started.Load():
		// A live message (or a duplicate: the original was lost here) past
		// a hole: the missing messages come first, from history.
		from := pos.last
		pos.catchingUp = true
		pos.held = []heldMessage{{seq: seq, event: event}}
		c.heldTotal++
		c.posMu.Unlock()
		c.srv.metrics.gapsFilled.Inc()
		go c.fillGap(chatID, from)
		return
	}
	pos.known, pos.last = true, seq
	c.posMu.Unlock()
	c.deliverDeferred(event)
}

// fillGap sends the stored messages of a chat after from, then the ones
// held meanwhile.
func (c *Conn) fillGap(chatID, from int64) {
	ctx, cancel := context.WithTimeout(c.srv.base, 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-c.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	c.replay(ctx, chatID, from)
}

// ParseResume reads the resume query parameter of a websocket request:
// "CHAT:SEQ,CHAT:SEQ", the last sequence the client has of each chat.
func ParseResume(v string) (map[int64]int64, error) {
	out := map[int64]int64{}
	if v == "" {
		return out, nil
	}
	for item := range strings.SplitSeq(v, ",") {
		chat, seq, ok := strings.Cut(item, ":")
		id, err1 := strconv.ParseInt(chat, 10, 64)
		n, err2 := strconv.ParseInt(seq, 10, 64)
		if !ok || err1 != nil || err2 != nil || id <= 0 || n < 0 {
			return nil, fmt.Errorf("resume: %q is not CHAT:SEQ", item)
		}
		out[id] = n
	}
	if len(out) > maxResumeChats {
		return nil, fmt.Errorf("resume: at most %d chats", maxResumeChats)
	}
	return out, nil
}

// maxResumeChats bounds the chats one resume names.
const maxResumeChats = 1000

// holdForResume makes the live messages of the chats to resume wait until
// their replay: called before the connection joins its chats.
func (c *Conn) holdForResume(from map[int64]int64) {
	c.posMu.Lock()
	defer c.posMu.Unlock()
	if len(from) > 0 && c.positions == nil {
		c.positions = make(map[int64]*chatPosition, len(from))
	}
	for id := range from {
		c.positions[id] = &chatPosition{catchingUp: true}
	}
}

// resume replays, for each chat to resume that the user is in, the stored
// messages after the client's last sequence, then the live ones held
// meanwhile, and then sends "resumed" with the sequence reached in each
// chat. Chats the user is no longer in are dropped (their held messages too).
func (c *Conn) resume(ctx context.Context, from map[int64]int64) {
	chats := c.currentChats()
	ids := make([]int64, 0, len(from))
	for id := range from {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	reached := make(map[string]int64, len(ids))
	for _, id := range ids {
		if !slices.Contains(chats, id) {
			c.dropPosition(id)
			continue
		}
		last, ok := c.replay(ctx, id, from[id])
		if !ok {
			return
		}
		reached[strconv.FormatInt(id, 10)] = last
	}
	b, err := json.Marshal(protocol.Resumed{Type: protocol.TypeResumed, Positions: reached})
	if err == nil {
		c.deliverWait(b)
	}
}

// dropPosition forgets a chat's position and its held messages (the user
// left the chat).
func (c *Conn) dropPosition(chatID int64) {
	c.posMu.Lock()
	defer c.posMu.Unlock()
	if pos := c.positions[chatID]; pos != nil {
		c.heldTotal -= len(pos.held)
		delete(c.positions, chatID)
	}
}

// replay sends one chat's stored messages after seq, then the live
// messages held meanwhile, strictly in sequence: when the held ones do not
// follow on (pub/sub lost one), it reads history again. Sends wait for room
// in the send queue, leaving half of it to live traffic of other chats (a
// client that does not read is closed as a slow consumer). It reports the
// last sequence delivered, and false when the connection had to close.
func (c *Conn) replay(ctx context.Context, chatID, seq int64) (int64, bool) {
	last := seq
	// History is read again only across a hole in what was held; held
	// messages that follow on are sent and the held list checked again, so a
	// busy chat's replay ends without a history read per round.
	readHistory := true
	for reads, rounds := 0, 0; ; rounds++ {
		if readHistory {
			if reads == maxReplayRounds {
				c.slow()
				return last, false
			}
			reads++
			if goOn, ok := c.readAfter(ctx, chatID, &last, reads == 1); !goOn {
				return last, ok
			}
		}
		if rounds == maxHeldRounds {
			c.slow()
			return last, false
		}
		readHistory = false

		c.posMu.Lock()
		pos := c.positions[chatID]
		if pos == nil {
			c.posMu.Unlock()
			return last, true
		}
		held := pos.held
		pos.held = nil
		c.heldTotal -= len(held)
		if len(held) == 0 {
			pos.catchingUp = false
			pos.known = true
			pos.last = max(pos.last, last)
			c.posMu.Unlock()
			return last, true
		}
		c.posMu.Unlock()

		slices.SortFunc(held, func(a, b heldMessage) int { return int(a.seq - b.seq) })
		for _, h := range held {
			if h.seq <= last {
				continue
			}
			if h.seq != last+1 {
				// A hole: read history again from last, which holds the
				// missing message and the rest of these.
				readHistory = true
				break
			}
			if !c.deliverWait(h.event) {
				return last, false
			}
			last = h.seq
		}
	}
}

// readAfter sends the stored messages of a chat after *last, page by page,
// moving *last. goOn is false when the replay ends here, with ok its
// result: the user left the chat (true), or the connection closed or had
// to (false).
func (c *Conn) readAfter(ctx context.Context, chatID int64, last *int64, firstRead bool) (goOn, ok bool) {
	first := true
	for {
		page, err := c.srv.historyAfter(ctx, c.user.ID, chatID, *last)
		if err != nil {
			switch busapi.CodeOf(err) {
			case protocol.CodeNotAMember, protocol.CodeChatNotFound:
				// The user left the chat meanwhile: nothing to send.
				c.dropPosition(chatID)
				return false, true
			}
			c.srv.log.WarnContext(ctx, "replay: read history", "chat_id", chatID, "err", err)
			c.Close(protocol.CloseServerError, "history unavailable; reconnect and resume")
			return false, false
		}
		if first && firstRead && len(page.Messages) == 0 && *last > 0 {
			// Nothing after the client's position: make sure it is not
			// past the end of the chat, or live messages up to it would
			// be dropped as already seen.
			*last = c.latestSeq(ctx, chatID, *last)
		}
		first = false
		for _, m := range page.Messages {
			b, err := json.Marshal(m)
			if err != nil || !c.deliverWait(b) {
				return false, false
			}
			*last = m.Seq
		}
		if len(page.Messages) < resumePage {
			return true, true
		}
	}
}

// historyAfter reads the page of a chat after seq for a replay. Connections
// of one gateway that need the same page at the same time (a gap every
// member saw, or a reconnect storm resuming from one position) share one
// read: each of them is subscribed to the chat, so the chat service
// already let its user in, and the history service checks the access of
// the user whose read goes out.
func (s *Server) historyAfter(ctx context.Context, userID, chatID, seq int64) (busapi.HistoryPage, error) {
	key := strconv.FormatInt(chatID, 10) + ":" + strconv.FormatInt(seq, 10)
	ch := s.pages.DoChan(key, func() (any, error) {
		// The read outlives a caller that gives up, so the others still get it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		return s.up.History(rctx, busapi.HistoryRequest{UserID: userID, ChatID: chatID, AfterSeq: seq, Limit: resumePage})
	})
	select {
	case r := <-ch:
		if code := busapi.CodeOf(r.Err); r.Shared && (code == protocol.CodeNotAMember || code == protocol.CodeChatNotFound) {
			// Another user was refused (they may have left the chat): that
			// says nothing about this user, who reads alone. Other failures
			// (history unavailable) are shared: retrying each alone would
			// multiply the load on a struggling service.
			return s.up.History(ctx, busapi.HistoryRequest{UserID: userID, ChatID: chatID, AfterSeq: seq, Limit: resumePage})
		}
		if r.Err != nil {
			return busapi.HistoryPage{}, r.Err
		}
		if r.Shared {
			s.metrics.pagesShared.Inc()
		}
		return r.Val.(busapi.HistoryPage), nil
	case <-ctx.Done():
		return busapi.HistoryPage{}, ctx.Err()
	}
}

// latestSeq returns the chat's newest sequence if it is below seq, else seq.
func (c *Conn) latestSeq(ctx context.Context, chatID, seq int64) int64 {
	page, err := c.srv.up.History(ctx, busapi.HistoryRequest{UserID: c.user.ID, ChatID: chatID, Limit: 1})
	if err != nil {
		return seq
	}
	if len(page.Messages) == 0 {
		return 0
	}
	return min(seq, page.Messages[len(page.Messages)-1].Seq)
}

// deliverWait queues an event once the send queue is at most half full
// (the other half is for live traffic), waiting up to the write timeout.
func (c *Conn) deliverWait(event []byte) bool {
	if c.queued() > c.srv.cfg.SendQueue/2 {
		deadline := time.NewTimer(c.srv.cfg.WriteTimeout)
		defer deadline.Stop()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for c.queued() > c.srv.cfg.SendQueue/2 {
			select {
			case <-c.closed:
				return false
			case <-deadline.C:
				c.slow()
				return false
			case <-tick.C:
			}
		}
	}
	if c.isClosed() {
		return false
	}
	c.Deliver(event)
	return !c.isClosed()
}

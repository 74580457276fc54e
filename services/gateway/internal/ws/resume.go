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

// resumePage is how many messages one history read of a resume fetches.
const resumePage = 100

// chatPosition is what a connection has delivered of one chat.
type chatPosition struct {
	last int64 // the highest sequence delivered
	// catchingUp: a resume is replaying history; live messages wait in
	// held (bounded by the send queue) and go out after the replay.
	catchingUp bool
	held       []heldMessage
}

type heldMessage struct {
	seq   int64
	event []byte
}

// DeliverMessage delivers a stored message of a chat unless the connection
// already has it (a message seen in a resume's replay, or a retried
// message published again): one sequence number is delivered once. During a
// resume of the chat it is held back until the replay is done.
func (c *Conn) DeliverMessage(chatID, seq int64, event []byte) {
	c.posMu.Lock()
	pos := c.positions[chatID]
	if pos == nil {
		pos = &chatPosition{}
		c.positions[chatID] = pos
	}
	if pos.catchingUp {
		if len(pos.held) >= cap(c.send) {
			c.posMu.Unlock()
			c.slow()
			return
		}
		pos.held = append(pos.held, heldMessage{seq: seq, event: event})
		c.posMu.Unlock()
		return
	}
	if seq > 0 && seq <= pos.last {
		c.posMu.Unlock()
		return
	}
	if pos.last > 0 && seq > pos.last+1 {
		// A gap: Redis pub/sub lost a message (it is at-most-once). The
		// missing ones are stored (they were committed before this one was
		// published), so fetch them and send them first.
		from := pos.last
		pos.catchingUp = true
		pos.held = []heldMessage{{seq: seq, event: event}}
		c.posMu.Unlock()
		c.srv.metrics.gapsFilled.Inc()
		go c.fillGap(chatID, from)
		return
	}
	pos.last = max(pos.last, seq)
	c.posMu.Unlock()
	c.Deliver(event)
}

// fillGap sends the stored messages of a chat after from, then the ones
// held meanwhile.
func (c *Conn) fillGap(chatID, from int64) {
	ctx, cancel := context.WithTimeout(c.srv.base, 30*time.Second)
	defer cancel()
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
	for id := range from {
		c.positions[id] = &chatPosition{catchingUp: true}
	}
}

// resume replays, for each chat to resume that the user is in, the stored
// messages after the client's last sequence, then the live ones held
// meanwhile, and answers "resumed" with the sequence reached in each chat.
// Chats the user is no longer in are dropped (their held messages too).
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
			c.posMu.Lock()
			delete(c.positions, id)
			c.posMu.Unlock()
			continue
		}
		last, ok := c.replay(ctx, id, from[id])
		if !ok {
			return
		}
		reached[strconv.FormatInt(id, 10)] = last
	}
	c.deliverJSON(protocol.Resumed{Type: protocol.TypeResumed, Positions: reached})
}

// replay sends one chat's stored messages after seq, waiting for room in
// the send queue (a client that does not read is closed as a slow
// consumer), then the live messages held meanwhile. It reports the last
// sequence delivered, and false when the connection had to close.
func (c *Conn) replay(ctx context.Context, chatID, seq int64) (int64, bool) {
	c.posMu.Lock()
	pos := c.positions[chatID]
	c.posMu.Unlock()

	last := seq
	for {
		page, err := c.srv.up.History(ctx, busapi.HistoryRequest{UserID: c.user.ID, ChatID: chatID, AfterSeq: last, Limit: resumePage})
		if err != nil {
			c.srv.log.WarnContext(ctx, "resume: read history", "chat_id", chatID, "err", err)
			c.Close(protocol.CloseServerError, "history unavailable; reconnect and resume")
			return last, false
		}
		for _, m := range page.Messages {
			b, err := json.Marshal(m)
			if err != nil || !c.deliverWait(b) {
				return last, false
			}
			last = m.Seq
		}
		if len(page.Messages) < resumePage {
			break
		}
	}

	c.posMu.Lock()
	defer c.posMu.Unlock()
	for _, h := range pos.held {
		if h.seq > last {
			c.Deliver(h.event)
			last = h.seq
		}
	}
	pos.held = nil
	pos.catchingUp = false
	pos.last = max(pos.last, last)
	return last, true
}

// deliverWait queues an event, waiting up to the write timeout for room.
func (c *Conn) deliverWait(event []byte) bool {
	t := time.NewTimer(c.srv.cfg.WriteTimeout)
	defer t.Stop()
	select {
	case c.send <- event:
		return true
	case <-c.closed:
		return false
	case <-t.C:
		c.slow()
		return false
	}
}

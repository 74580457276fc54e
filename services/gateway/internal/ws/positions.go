package ws

import (
	"context"
	"strconv"
)

// CheckPositions catches a lost *last* message, which no later message
// reveals as a gap: it asks history for the newest stored sequence of every
// chat a local connection is in, and fills from history each connection
// that is behind what was already stored at the previous check (one check
// ago at least, so a message on its way from PostgreSQL to Redis is not
// taken for lost). Run it periodically.
func (s *Server) CheckPositions(ctx context.Context) {
	s.mu.Lock()
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	chatsOf := make([][]int64, len(conns))
	seen := map[int64]bool{}
	var chats []int64
	for i, c := range conns {
		chatsOf[i] = c.currentChats()
		for _, id := range chatsOf[i] {
			if !seen[id] {
				seen[id] = true
				chats = append(chats, id)
			}
		}
	}
	if len(chats) == 0 {
		return
	}
	latest, err := s.up.Latest(ctx, chats)
	if err != nil {
		s.log.WarnContext(ctx, "position check: read the latest sequences", "err", err)
		return
	}
	s.posMu.Lock()
	previous := s.storedBefore
	s.storedBefore = make(map[int64]int64, len(latest))
	for key, seq := range latest {
		if id, err := strconv.ParseInt(key, 10, 64); err == nil {
			s.storedBefore[id] = seq
		}
	}
	s.posMu.Unlock()
	for i, c := range conns {
		for _, id := range chatsOf[i] {
			if stored, ok := previous[id]; ok {
				c.catchUpTo(id, stored)
			}
		}
	}
}

// catchUpTo fills a chat from history when the connection is known to be
// behind stored.
func (c *Conn) catchUpTo(chatID, stored int64) {
	c.posMu.Lock()
	pos := c.positions[chatID]
	if pos == nil || !pos.known || pos.catchingUp || pos.last >= stored || !c.started.Load() {
		c.posMu.Unlock()
		return
	}
	from := pos.last
	pos.catchingUp = true
	c.posMu.Unlock()
	c.srv.metrics.gapsFilled.Inc()
	go c.fillGap(chatID, from)
}

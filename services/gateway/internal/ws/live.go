package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
)

// Presence is who is online over every gateway: connections count
// themselves in and out, and views ask who of a chat is online.
type Presence interface {
	Connect(userID int64, username string)
	Disconnect(userID int64)
	// Online returns those of the users who are online.
	Online(ctx context.Context, userIDs []int64) ([]protocol.Member, error)
	// OnlineAll returns every online user.
	OnlineAll(ctx context.Context) ([]protocol.Member, error)
}

// UsePresence makes the server count its connections in p and answer
// views from it. Call it before Serve.
func (s *Server) UsePresence(p Presence) { s.presence = p }

// refusalWindow is the window in which Config.SendRefusals refusals close
// a connection.
const refusalWindow = 10 * time.Second

// typingPublishTimeout bounds the publication of a typing event: it runs in
// the connection's reader, and typing is best effort.
const typingPublishTimeout = 250 * time.Millisecond

// presenceQueryTimeout bounds the presence query of one chat, and
// presenceQueries the queries one list push makes at once.
const (
	presenceQueryTimeout = 5 * time.Second
	presenceQueries      = 8
)

// refreshRetry is the first delay before RefreshViews asks again for the
// chats whose query failed; it doubles up to refreshRetryMax.
const (
	refreshRetry    = time.Second
	refreshRetryMax = 30 * time.Second
)

// maxTypingChats bounds the per-connection memory of when the user last
// typed in each chat; older entries are dropped past it.
const maxTypingChats = 64

// view is what a connection shows: one chat, and who of it is online.
// Guarded by Server.viewMu.
type view struct {
	c        *Conn
	chatID   int64
	everyone bool    // every user is a member (general)
	members  []int64 // the members otherwise
	// gen counts presence lists asked for; a list is delivered only if no
	// newer one was asked meanwhile. While loading, changes wait in held,
	// so that they follow the list they change.
	gen     int
	loading bool
	held    [][]byte
	// stale: a change could not be queued (the connection's queue was
	// half full); a fresh list follows once there is room, and changes
	// are dropped until then.
	stale bool
}

// maxHeldChanges bounds the changes a view holds while its list loads;
// past it the view goes stale and gets a fresh list instead.
const maxHeldChanges = 64

// allow takes a token of the connection's bucket for a costly request
// (send, edit, delete, view). Over the limit the request is answered with
// rate_limited; a connection refused Config.SendRefusals times within
// refusalWindow is closed with CloseRateLimited, after the error.
// Connections built without a bucket and not limited (tests) are not
// limited.
func (c *Conn) allow(ev protocol.ClientEvent) bool {
	if c.limiter == nil {
		if !c.limited {
			return true
		}
		c.limiter = newLimiter(c.srv.cfg)
	}
	if c.limiter.Allow() {
		return true
	}
	c.srv.metrics.rateLimited.Inc()
	c.deliverJSON(protocol.Error{Type: protocol.TypeError, ID: ev.ID, Code: protocol.CodeRateLimited,
		Message: "too many requests; slow down", Retryable: true})
	now := time.Now()
	if now.Sub(c.refusedSince) > refusalWindow {
		c.refusedSince, c.refusals = now, 0
	}
	c.refusals++
	if c.refusals >= c.srv.cfg.SendRefusals {
		c.srv.metrics.rateLimitCloses.Inc()
		c.Close(protocol.CloseRateLimited, "too many requests; reconnect later and resume")
	}
	return false
}

func newLimiter(cfg Config) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(cfg.SendRate), cfg.SendBurst)
}

// handleTyping tells the members viewing a chat that the user types. It is
// ephemeral (never stored, no sequence number) and best effort: one per
// chat per Config.TypingInterval goes out, the rest are dropped silently.
func (c *Conn) handleTyping(ctx context.Context, ev protocol.ClientEvent) {
	if !c.inChat(ev) {
		return
	}
	now := time.Now()
	if last, ok := c.typedAt[ev.ChatID]; ok && now.Sub(last) < c.srv.cfg.TypingInterval {
		return
	}
	if c.typedAt == nil {
		c.typedAt = map[int64]time.Time{}
	}
	if len(c.typedAt) >= maxTypingChats {
		for id, t := range c.typedAt {
			if now.Sub(t) >= c.srv.cfg.TypingInterval {
				delete(c.typedAt, id)
			}
		}
		if len(c.typedAt) >= maxTypingChats {
			return
		}
	}
	c.typedAt[ev.ChatID] = now
	b, err := json.Marshal(protocol.Typing{Type: protocol.TypeTyping, ChatID: ev.ChatID, UserID: c.user.ID, Username: c.user.Username})
	if err != nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, typingPublishTimeout)
	defer cancel()
	if err := c.srv.hub.PublishEphemeral(pctx, ev.ChatID, c.user.ID, b); err != nil {
		c.srv.log.WarnContext(ctx, "publish typing", "chat_id", ev.ChatID, "err", err)
	}
}

// inChat checks that the event names a chat the connection is in, and
// answers the client when not.
func (c *Conn) inChat(ev protocol.ClientEvent) bool {
	if ev.ChatID <= 0 {
		c.deliverJSON(protocol.Error{Type: protocol.TypeError, ID: ev.ID, Code: protocol.CodeBadRequest, Message: "chat_id must be a chat's id"})
		return false
	}
	if !slices.Contains(c.currentChats(), ev.ChatID) {
		c.deliverJSON(protocol.Error{Type: protocol.TypeError, ID: ev.ID, Code: protocol.CodeNotAMember, Message: "you are not a member of this chat"})
		return false
	}
	return true
}

// DeliverEphemeral passes on an event that is not part of a chat's history
// (typing) if the connection views the chat; when its queue is half full
// the event is dropped, never the connection.
func (c *Conn) DeliverEphemeral(chatID int64, event []byte) {
	c.srv.viewMu.Lock()
	viewing := c.view != nil && c.view.chatID == chatID
	c.srv.viewMu.Unlock()
	if viewing {
		c.offer(event)
	}
}

// handleView records which chat the connection shows (0: none) and answers
// with the chat's online members; from then on the connection receives
// presence changes and typing of that chat.
func (c *Conn) handleView(ctx context.Context, ev protocol.ClientEvent) {
	if ev.ChatID == 0 {
		c.srv.setView(c, nil)
		return
	}
	if !c.inChat(ev) {
		return
	}
	if c.srv.presence == nil {
		c.deliverJSON(protocol.Error{Type: protocol.TypeError, ID: ev.ID, Code: protocol.CodeUnavailable, Message: "presence is not available", Retryable: true})
		return
	}
	chat, err := c.srv.up.GetChat(ctx, c.user.ID, ev.ChatID)
	if err != nil {
		c.answerError(ctx, ev, err)
		return
	}
	v := &view{c: c, chatID: chat.ID, everyone: chat.Everyone, members: memberIDs(chat)}
	if !c.srv.setView(c, v) {
		// The user left the chat meanwhile.
		c.deliverJSON(protocol.Error{Type: protocol.TypeError, ID: ev.ID, Code: protocol.CodeNotAMember, Message: "you are not a member of this chat"})
		return
	}
	if err := c.srv.pushPresence(ctx, []*view{v}); err != nil {
		c.answerError(ctx, ev, err)
	}
}

// answerError answers a request with the code of a failed call.
func (c *Conn) answerError(ctx context.Context, ev protocol.ClientEvent, err error) {
	code := busapi.CodeOf(err)
	msg := "internal error"
	if be, ok := errors.AsType[*busapi.Error](err); ok {
		msg = be.Message
	} else if code == protocol.CodeInternal {
		code, msg = protocol.CodeUnavailable, "presence is not available now"
	}
	if code.Retryable() {
		c.srv.log.WarnContext(ctx, "request failed", "type", ev.Type, "err", err)
	}
	c.deliverJSON(protocol.Error{Type: protocol.TypeError, ID: ev.ID, Code: code, Message: msg, Retryable: code.Retryable()})
}

func memberIDs(chat busapi.Chat) []int64 {
	ids := make([]int64, len(chat.Members))
	for i, m := range chat.Members {
		ids[i] = m.ID
	}
	return ids
}

// setView replaces the connection's view (nil: none) and the index of
// who watches whom. A view of a chat the connection is no longer in (the
// user left it while the view was being looked up) is not taken: the
// connection then views nothing, and setView reports false.
func (s *Server) setView(c *Conn, v *view) bool {
	if v != nil {
		// syncChats holds syncMu from reading the connection's chats until
		// it has recorded the new ones, dropping the views of the chats
		// left: under it the chats are settled, and a removal either came
		// before (the check below sees it) or comes after (it drops this
		// view).
		c.syncMu.Lock()
		defer c.syncMu.Unlock()
	}
	s.viewMu.Lock()
	defer s.viewMu.Unlock()
	if old := c.view; old != nil {
		s.unindexView(old)
		c.view = nil
	}
	if v == nil {
		return true
	}
	c.mu.Lock()
	in := slices.Contains(c.chats, v.chatID)
	c.mu.Unlock()
	if !in {
		return false
	}
	c.view = v
	s.indexView(v)
	return true
}

// unviewChats drops the connection's view if it shows one of the chats
// (the user left them).
func (s *Server) unviewChats(c *Conn, chatIDs []int64) {
	s.viewMu.Lock()
	defer s.viewMu.Unlock()
	if c.view != nil && slices.Contains(chatIDs, c.view.chatID) {
		s.unindexView(c.view)
		c.view = nil
	}
}

func (s *Server) indexView(v *view) {
	addViewIndex(s.viewers, v.chatID, v)
	if v.everyone {
		s.everyoneViews[v] = struct{}{}
		return
	}
	for _, id := range v.members {
		addViewIndex(s.watchers, id, v)
	}
}

func (s *Server) unindexView(v *view) {
	removeViewIndex(s.viewers, v.chatID, v)
	delete(s.everyoneViews, v)
	for _, id := range v.members {
		removeViewIndex(s.watchers, id, v)
	}
}

func addViewIndex(m map[int64]map[*view]struct{}, k int64, v *view) {
	set := m[k]
	if set == nil {
		set = map[*view]struct{}{}
		m[k] = set
	}
	set[v] = struct{}{}
}

func removeViewIndex(m map[int64]map[*view]struct{}, k int64, v *view) {
	if set := m[k]; set != nil {
		delete(set, v)
		if len(set) == 0 {
			delete(m, k)
		}
	}
}

// pushPresence sends each view the online members of its chat, asking
// presence once per chat. Changes that arrive meanwhile follow the list.
func (s *Server) pushPresence(ctx context.Context, views []*view) error {
	_, err := s.loadPresence(ctx, views)
	return err
}

// loadPresence is pushPresence; it also returns the views whose chat's
// query failed (those still current). Each chat's query has its own
// timeout, presenceQueries of them run at once.
func (s *Server) loadPresence(ctx context.Context, views []*view) (failed []*view, err error) {
	if s.presence == nil || len(views) == 0 {
		return nil, nil
	}
	gens := make(map[*view]int, len(views))
	byChat := map[int64][]*view{}
	s.viewMu.Lock()
	for _, v := range views {
		if v.c.view != v {
			continue
		}
		v.gen++
		v.loading = true
		gens[v] = v.gen
		byChat[v.chatID] = append(byChat[v.chatID], v)
	}
	s.viewMu.Unlock()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	sem := make(chan struct{}, presenceQueries)
	for chatID, vs := range byChat {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			qctx, cancel := context.WithTimeout(ctx, presenceQueryTimeout)
			var online []protocol.Member
			var err error
			if vs[0].everyone {
				online, err = s.presence.OnlineAll(qctx)
			} else {
				online, err = s.presence.Online(qctx, vs[0].members)
			}
			cancel()
			var list []byte
			if err == nil {
				total := len(online)
				list, err = json.Marshal(protocol.Presence{Type: protocol.TypePresence, ChatID: chatID,
					Online: online[:min(total, protocol.MaxPresenceList)], Total: total})
			}
			var lost []*view
			s.viewMu.Lock()
			for _, v := range vs {
				if v.c.view != v || v.gen != gens[v] {
					continue // replaced, or a newer list is on its way
				}
				if list != nil {
					v.c.Deliver(list)
				} else {
					lost = append(lost, v)
				}
				for _, ev := range v.held {
					if !v.c.offer(ev) {
						s.markStale(v)
						break
					}
				}
				v.held, v.loading = nil, false
			}
			s.viewMu.Unlock()
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("presence of chat %d: %w", chatID, err))
				failed = append(failed, lost...)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed, errors.Join(errs...)
}

// PresenceChanged tells the local connections viewing a chat with the user
// in it that the user came online or went offline.
func (s *Server) PresenceChanged(userID int64, username string, online bool) {
	events := map[int64][]byte{}
	s.viewMu.Lock()
	defer s.viewMu.Unlock()
	deliver := func(v *view) {
		b, ok := events[v.chatID]
		if !ok {
			var err error
			b, err = json.Marshal(protocol.PresenceChanged{Type: protocol.TypePresenceChanged, ChatID: v.chatID,
				UserID: userID, Username: username, Online: online})
			if err != nil {
				return
			}
			events[v.chatID] = b
		}
		switch {
		case v.stale:
			// A fresh list is on its way.
		case v.loading && len(v.held) < maxHeldChanges:
			v.held = append(v.held, b)
		case v.loading || !v.c.offer(b):
			s.markStale(v)
		}
	}
	for v := range s.watchers[userID] {
		deliver(v)
	}
	for v := range s.everyoneViews {
		deliver(v)
	}
}

// markStale drops a view's held changes and sends it a fresh list once its
// connection's queue has room again. Call with viewMu held.
func (s *Server) markStale(v *view) {
	if v.stale {
		return
	}
	v.stale = true
	v.held = nil
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for v.c.queued() >= s.cfg.SendQueue/2 {
			select {
			case <-v.c.closed:
				return
			case <-s.base.Done():
				return
			case <-tick.C:
			}
		}
		s.viewMu.Lock()
		current := v.c.view == v
		v.stale = false
		s.viewMu.Unlock()
		if !current {
			return
		}
		ctx, cancel := context.WithTimeout(s.base, 10*time.Second)
		defer cancel()
		if err := s.pushPresence(ctx, []*view{v}); err != nil {
			s.log.WarnContext(ctx, "presence list after dropped changes", "err", err)
		}
	}()
}

// RefreshViews sends every viewing connection its chat's online members
// again: after Redis lost presence and the gateways rebuilt it, or this
// gateway's subscription broke, changes may have been missed. The chats
// whose query failed are asked again in the background, with a growing
// delay, until they succeed, ctx ends, or a newer RefreshViews covers them.
func (s *Server) RefreshViews(ctx context.Context) {
	s.viewMu.Lock()
	s.refreshGen++
	gen := s.refreshGen
	var views []*view
	for _, set := range s.viewers {
		for v := range set {
			views = append(views, v)
		}
	}
	s.viewMu.Unlock()
	failed, err := s.loadPresence(ctx, views)
	if err == nil {
		return
	}
	s.log.WarnContext(ctx, "refresh presence of viewed chats; retrying those that failed", "views", len(failed), "err", err)
	if len(failed) == 0 {
		return
	}
	go func() {
		delay := refreshRetry
		for len(failed) > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, refreshRetryMax)
			s.viewMu.Lock()
			superseded := s.refreshGen != gen
			s.viewMu.Unlock()
			if superseded {
				return
			}
			if failed, err = s.loadPresence(ctx, failed); err != nil && ctx.Err() == nil {
				s.log.WarnContext(ctx, "refresh presence of viewed chats", "views", len(failed), "err", err)
			}
		}
	}()
}

// chatViewsChanged brings the views of a chat up to date with its members
// after a chat event: connections of users no longer in it stop viewing
// it, and when the members changed every viewer gets the online members
// again.
func (s *Server) chatViewsChanged(ctx context.Context, chat busapi.Chat) {
	members := memberIDs(chat)
	var changed []*view
	s.viewMu.Lock()
	for v := range s.viewers[chat.ID] {
		if !chat.Everyone && !slices.Contains(members, v.c.user.ID) {
			s.unindexView(v)
			v.c.view = nil
			continue
		}
		if v.everyone == chat.Everyone && slices.Equal(sortedIDs(v.members), sortedIDs(members)) {
			continue
		}
		s.unindexView(v)
		nv := &view{c: v.c, chatID: chat.ID, everyone: chat.Everyone, members: members}
		v.c.view = nv
		s.indexView(nv)
		changed = append(changed, nv)
	}
	s.viewMu.Unlock()
	if err := s.pushPresence(ctx, changed); err != nil {
		s.log.WarnContext(ctx, "presence after a chat's members changed", "chat_id", chat.ID, "err", err)
	}
}

func sortedIDs(ids []int64) []int64 {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

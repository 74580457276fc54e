// Package chats is the chat service's domain: which chats exist, who is in
// them, who may edit them, and whether a message, or an edit or deletion of
// one, may be accepted. Every permission on a chat is decided here, by the
// service that owns the data: membership for every send and read, the
// creator for every edit of a chat, the sender for every change of a
// message.
package chats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/communications/communications/libs/protocol"
)

// Sentinel errors of the domain. Errors refusing a request's content are
// *RequestError values wrapping one of them, with a message for the client.
var (
	ErrChatNotFound   = errors.New("chat not found")
	ErrNotAMember     = errors.New("not a member of the chat")
	ErrInvalidMessage = errors.New("invalid message")
	// ErrNotCreator: only a chat's creator may edit it; nobody may edit a
	// chat every user is in ("general").
	ErrNotCreator = errors.New("not the chat's creator")
	// ErrInvalidInput: a field of a create or edit failed validation.
	ErrInvalidInput = errors.New("invalid input")
	// ErrNameTaken: another chat has the name, in any letter case.
	ErrNameTaken = errors.New("chat name taken")
	// ErrUnknownUser: a username that is no account.
	ErrUnknownUser = errors.New("unknown user")
	// ErrDuplicateMember: one user listed twice in one request.
	ErrDuplicateMember = errors.New("duplicate member")
	// ErrMessageNotFound: an edit or deletion of a sequence that is no
	// message of the chat (nothing, or an edit or deletion).
	ErrMessageNotFound = errors.New("message not found")
	// ErrNotSender: only a message's sender may edit or delete it.
	ErrNotSender = errors.New("not the message's sender")
	// ErrMessageDeleted: an edit or deletion of a deleted message.
	ErrMessageDeleted = errors.New("message deleted")
)

// RequestError refuses a request: Err is the sentinel saying why
// (ErrInvalidInput, ErrUnknownUser, ErrDuplicateMember, ErrNotCreator, ...),
// Msg says what is wrong in words fit for the client.
type RequestError struct {
	Err error
	Msg string
}

func (e *RequestError) Error() string { return e.Msg }

// Unwrap returns the sentinel.
func (e *RequestError) Unwrap() error { return e.Err }

func refuse(kind error, format string, args ...any) error {
	return &RequestError{Err: kind, Msg: fmt.Sprintf(format, args...)}
}

// GeneralChatID is the id of the chat "general", which every user is in.
const GeneralChatID int64 = 1

// Limits of chats, in Unicode code points and usernames.
const (
	MaxNameRunes        = 64
	MaxDescriptionRunes = 500
	// MaxMembersPerRequest bounds the usernames of one create, and the
	// added and removed usernames of one edit together.
	MaxMembersPerRequest = 100
	// MaxMembersPerChat bounds the members of one chat, the creator
	// included (the default of Config.MaxMembers). A chat travels with its
	// whole member list in one NATS message (chat.get, chat.list, chat
	// events), whose payload is at most 1 MB: the bound keeps every chat,
	// and a user's list of chats, well below it.
	MaxMembersPerChat = 1000
)

// Chat is a chat's record.
type Chat struct {
	ID          int64
	Name        string
	Description string
	// CreatorID is 0 for chats every user is in.
	CreatorID int64
	// Everyone is true for chats every user belongs to ("general"); they
	// have no member list and nobody may edit them.
	Everyone bool
	// Direct is true for the chat of two users (no name, no creator, two
	// members); nobody may edit it.
	Direct    bool
	CreatedAt time.Time
	// Members are the explicit members ordered by username (regardless of
	// letter case), the creator among them; nil for Everyone chats and
	// when not loaded (Store.Chat).
	Members []Member
	// LastSeq, ReadSeq and Unread are per user, filled only by Reads.List:
	// the chat's newest sequence, the user's read position and the unread
	// messages of others after it.
	LastSeq int64
	ReadSeq int64
	Unread  int
}

// Member is a user in a chat. Usernames never change, so a membership keeps
// the username it was added with.
type Member struct {
	ID       int64
	Username string
}

func (c Chat) hasMember(userID int64) bool {
	for _, m := range c.Members {
		if m.ID == userID {
			return true
		}
	}
	return false
}

// Message is a message to accept, or (Kind protocol.KindEdit or
// protocol.KindDelete) an edit or deletion of the message TargetSeq.
type Message struct {
	ChatID      int64
	SenderID    int64
	Sender      string
	Kind        string
	TargetSeq   int64
	ClientMsgID string
	Text        string
	AcceptedAt  time.Time
}

// Accepted says a message (or change) is durable. Duplicate: one with the
// same client message id had been accepted before; Seq is then its
// sequence number when it is already stored (0: not yet).
type Accepted struct {
	Duplicate bool
	Seq       int64
}

// Entry is a stored entry of a chat's history as the chat service needs
// it: whom it belongs to and whether it is a message that can change.
type Entry struct {
	Seq      int64
	Kind     string // protocol.KindMessage, KindEdit or KindDelete
	SenderID int64
	Deleted  bool
}

// Entries reads stored entries; the history service owns them.
type Entries interface {
	// Entry returns the entry of chat at seq, or an error wrapping
	// ErrMessageNotFound.
	Entry(ctx context.Context, chatID, seq int64) (Entry, error)
	// BySender returns the entry of chat that sender stored under
	// clientMsgID, or an error wrapping ErrMessageNotFound.
	BySender(ctx context.Context, chatID, senderID int64, clientMsgID string) (Entry, error)
}

// Change is what an edit changes; nil and empty fields are left alone.
type Change struct {
	Name        *string
	Description *string
	// Add are users to add who are not members yet.
	Add []Member
	// Remove are ids of members to remove (never the creator).
	Remove []int64
}

func (c Change) empty() bool {
	return c.Name == nil && c.Description == nil && len(c.Add) == 0 && len(c.Remove) == 0
}

// Store keeps chats and memberships.
type Store interface {
	// Chat returns the chat with id without its members, or
	// ErrChatNotFound.
	Chat(ctx context.Context, id int64) (Chat, error)
	// IsMember reports whether user is an explicit member of chat.
	IsMember(ctx context.Context, chatID, userID int64) (bool, error)
	// InChat reports whether user is in chat: an explicit member, or the
	// chat is everyone's; ErrChatNotFound when there is no such chat. One
	// read, as it is asked on every send.
	InChat(ctx context.Context, chatID, userID int64) (bool, error)
	// UserChats lists the ids of the chats user belongs to, "everyone"
	// chats included, in ascending order.
	UserChats(ctx context.Context, userID int64) ([]int64, error)
	// ChatWithMembers returns the chat with id and its members, or
	// ErrChatNotFound.
	ChatWithMembers(ctx context.Context, id int64) (Chat, error)
	// ListChats returns the chats user belongs to with their members:
	// "everyone" chats first, then by name regardless of letter case.
	ListChats(ctx context.Context, userID int64) ([]Chat, error)
	// CreateChat stores c (Name, Description, CreatorID, Members) and its
	// members at once and returns it as stored, or ErrNameTaken when
	// another chat has the name in any letter case.
	CreateChat(ctx context.Context, c Chat) (Chat, error)
	// UpdateChat calls decide with the chat and its members while no other
	// edit of the chat can run, applies the change decide returns
	// atomically and returns the chat after it. When decide fails nothing
	// changes and its error is returned. Errors: ErrChatNotFound,
	// ErrNameTaken.
	UpdateChat(ctx context.Context, id int64, decide func(Chat) (Change, error)) (Chat, error)
	// DirectChat returns the direct chat of two different users, creating
	// it with both as members when there is none (created tells which),
	// also when several ask at once.
	DirectChat(ctx context.Context, a, b Member) (c Chat, created bool, err error)
}

// Publisher makes an accepted message durable.
type Publisher interface {
	// Publish stores m durably and reports whether a message with the same
	// sender and client message id had already been published.
	Publish(ctx context.Context, m Message) (duplicate bool, err error)
}

// Users resolves usernames; the auth service owns accounts.
type Users interface {
	// Lookup returns the user of each name (matched regardless of letter
	// case), in order. A name that is no user fails the whole lookup with
	// an error wrapping ErrUnknownUser whose message names it.
	Lookup(ctx context.Context, usernames []string) ([]Member, error)
}

// EventKind says what changed in a chat.
type EventKind string

// Kinds of events.
const (
	// EventCreated: a new chat; Added holds every member.
	EventCreated EventKind = "created"
	// EventUpdated: the name or description changed (and, when Added or
	// Removed are set, the members too, in the same edit).
	EventUpdated EventKind = "updated"
	// EventMembers: only the members changed.
	EventMembers EventKind = "members"
)

// Event announces a change of a chat. Chat is the chat after the change;
// Added and Removed are the ids of users whose membership changed.
type Event struct {
	Kind    EventKind
	Chat    Chat
	Added   []int64
	Removed []int64
}

// Events announces changes of chats to the gateways.
type Events interface {
	ChatChanged(ctx context.Context, ev Event) error
}

// Config configures a Service. The zero value gives the defaults.
type Config struct {
	// MaxMembers bounds the members of one chat, the creator included.
	// Default (0 or less): MaxMembersPerChat. Tests set it lower.
	MaxMembers int
	// MemberCache, when set, keeps the memberships the service granted
	// (see Service.Send): a *grantcache.Cache in front of StoreChecker,
	// subscribed to the chat events of the other replicas. Nil: every
	// check reads the store.
	MemberCache MemberCache
}

// MemberCache remembers granted memberships (grantcache.Cache does).
type MemberCache interface {
	// Check returns nil when user is in chat (remembered or asked).
	Check(ctx context.Context, userID, chatID int64) error
	// Removed forgets the memberships of users removed from chat.
	Removed(chatID int64, userIDs []int64)
}

// StoreChecker checks membership in store, with no cache: the Checker for
// a MemberCache. A refusal is ErrNotAMember or ErrChatNotFound (IsRefusal).
func StoreChecker(store Store) func(ctx context.Context, userID, chatID int64) error {
	return func(ctx context.Context, userID, chatID int64) error {
		ok, err := store.InChat(ctx, chatID, userID)
		if err != nil {
			return err
		}
		if !ok {
			return ErrNotAMember
		}
		return nil
	}
}

// IsRefusal reports whether a membership check refused (the user is not in
// the chat, or there is no such chat) rather than failed.
func IsRefusal(err error) bool {
	return errors.Is(err, ErrNotAMember) || errors.Is(err, ErrChatNotFound)
}

// Service is the chat service's domain.
type Service struct {
	store      Store
	pub        Publisher
	entries    Entries
	users      Users
	events     Events
	log        *slog.Logger
	maxMembers int
	members    MemberCache // nil: no cache
	// check asks the member cache, else storeCheck; storeCheck the store.
	check, storeCheck func(ctx context.Context, userID, chatID int64) error
	now               func() time.Time
}

// NewService returns a Service. log records events that could not be
// announced (the change itself is committed by then).
func NewService(store Store, pub Publisher, entries Entries, users Users, events Events, log *slog.Logger, cfg Config) *Service {
	if cfg.MaxMembers <= 0 {
		cfg.MaxMembers = MaxMembersPerChat
	}
	s := &Service{
		store: store, pub: pub, entries: entries, users: users, events: events, log: log,
		maxMembers: cfg.MaxMembers, members: cfg.MemberCache, now: time.Now,
	}
	s.storeCheck = StoreChecker(store)
	s.check = s.storeCheck
	if s.members != nil {
		s.check = s.members.Check
	}
	return s
}

// Send validates m, checks that its sender is a member of its chat, and
// publishes it durably. When Send returns nil the message will be stored.
// A retry the stream recognises is answered with the original's sequence
// number when it is already stored.
//
// A membership granted is remembered when the service has a MemberCache:
// a member added is let in at once (refusals are not remembered), a member
// removed through this replica is refused from the next send on, and
// through another replica once its chat event arrives (or, should that
// event be lost, once the cache's TTL lapses).
func (s *Service) Send(ctx context.Context, m Message) (Accepted, error) {
	if m.Kind != protocol.KindMessage || m.TargetSeq != 0 {
		return Accepted{}, fmt.Errorf("%w: a send has no kind or target", ErrInvalidMessage)
	}
	if err := validate(m); err != nil {
		return Accepted{}, err
	}
	if err := s.checkMember(ctx, m.ChatID, m.SenderID); err != nil {
		return Accepted{}, err
	}
	return s.publish(ctx, m)
}

// ChangeMessage accepts an edit (Kind protocol.KindEdit, with the new
// text) or a deletion (protocol.KindDelete, no text) of the sender's
// message m.TargetSeq: the sender must be a member of the chat, and the
// target (asked of the history service) a message of the chat, sent by the
// sender, not deleted. The history writer checks the target again when it
// stores the change.
//
// A change whose client message id the sender already stored is answered
// as a duplicate with its sequence number whatever its target's state now
// (a retried deletion finds its target deleted by itself).
//
// Errors: ErrInvalidMessage, ErrChatNotFound, ErrNotAMember,
// ErrMessageNotFound, ErrNotSender, ErrMessageDeleted.
func (s *Service) ChangeMessage(ctx context.Context, m Message) (Accepted, error) {
	if m.Kind != protocol.KindEdit && m.Kind != protocol.KindDelete {
		return Accepted{}, fmt.Errorf("%w: a change is an edit or a delete, not %q", ErrInvalidMessage, m.Kind)
	}
	if err := validate(m); err != nil {
		return Accepted{}, err
	}
	if err := s.checkMember(ctx, m.ChatID, m.SenderID); err != nil {
		return Accepted{}, err
	}
	target, err := s.entries.Entry(ctx, m.ChatID, m.TargetSeq)
	var refusal error
	switch {
	case errors.Is(err, ErrMessageNotFound):
		refusal = refuse(ErrMessageNotFound, "no message with sequence %d in this chat", m.TargetSeq)
	case err != nil:
		return Accepted{}, fmt.Errorf("change message: %w", err)
	default:
		refusal = checkTarget(m, target)
	}
	if refusal != nil {
		prev, err := s.entries.BySender(ctx, m.ChatID, m.SenderID, m.ClientMsgID)
		switch {
		case err == nil:
			return Accepted{Duplicate: true, Seq: prev.Seq}, nil
		case !errors.Is(err, ErrMessageNotFound):
			return Accepted{}, fmt.Errorf("change message: %w", err)
		}
		return Accepted{}, refusal
	}
	return s.publish(ctx, m)
}

// checkTarget decides whether change may apply to target.
func checkTarget(change Message, target Entry) error {
	switch {
	case target.Kind != protocol.KindMessage:
		return refuse(ErrMessageNotFound, "sequence %d is a change of another message, not a message", target.Seq)
	case target.SenderID != change.SenderID:
		return refuse(ErrNotSender, "only its sender can %s a message", change.Kind)
	case target.Deleted:
		return refuse(ErrMessageDeleted, "message %d is deleted", target.Seq)
	}
	return nil
}

// publish makes m durable. When the stream knew it already (a retry), the
// answer carries the original's sequence number if it is stored; a failure
// to learn it is logged and only leaves the number out: the message is
// durable all the same.
func (s *Service) publish(ctx context.Context, m Message) (Accepted, error) {
	m.AcceptedAt = s.now().UTC()
	dup, err := s.pub.Publish(ctx, m)
	if err != nil {
		return Accepted{}, fmt.Errorf("publish: %w", err)
	}
	if !dup {
		return Accepted{}, nil
	}
	prev, err := s.entries.BySender(ctx, m.ChatID, m.SenderID, m.ClientMsgID)
	switch {
	case errors.Is(err, ErrMessageNotFound):
		// Accepted before but not stored yet: its message event follows.
	case err != nil:
		s.log.WarnContext(ctx, "look up the sequence of a retried message", "chat_id", m.ChatID, "err", err)
	default:
		return Accepted{Duplicate: true, Seq: prev.Seq}, nil
	}
	return Accepted{Duplicate: true}, nil
}

// UserChats lists the ids of a user's chats.
func (s *Service) UserChats(ctx context.Context, userID int64) ([]int64, error) {
	ids, err := s.store.UserChats(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("user chats: %w", err)
	}
	return ids, nil
}

// Access returns nil when user may read chat, else ErrChatNotFound or
// ErrNotAMember. The history service asks for the history reads it has no
// grant for. The answer is read from the store, never from the member
// cache: the history service caches it in turn, and an answer from a
// replica that has not yet seen a removal's event would outlive that event
// in the history service's cache.
func (s *Service) Access(ctx context.Context, userID, chatID int64) error {
	if err := memberError(s.storeCheck(ctx, userID, chatID)); err != nil {
		return fmt.Errorf("access: %w", err)
	}
	return nil
}

// Get returns a chat with its members to one of its members.
func (s *Service) Get(ctx context.Context, userID, chatID int64) (Chat, error) {
	c, err := s.store.ChatWithMembers(ctx, chatID)
	if err != nil {
		return Chat{}, fmt.Errorf("get chat: %w", err)
	}
	if !c.Everyone && !c.hasMember(userID) {
		return Chat{}, fmt.Errorf("get chat: %w", ErrNotAMember)
	}
	return c, nil
}

// List returns the user's chats: "general" first, then by name regardless
// of letter case.
func (s *Service) List(ctx context.Context, userID int64) ([]Chat, error) {
	cs, err := s.store.ListChats(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("list chats: %w", err)
	}
	return cs, nil
}

// NewChat asks for a chat to be created.
type NewChat struct {
	CreatorID int64
	// CreatorName is the creator's username, as the gateway knows it from
	// the session.
	CreatorName string
	Name        string
	Description string
	// Members are usernames, any letter case. The creator is always a
	// member, whether listed or not.
	Members []string
}

// CreateChat validates req, resolves its members and creates the chat. The
// name is trimmed; more than Config.MaxMembers members, the creator
// included, is ErrInvalidInput. Errors: ErrInvalidInput, ErrDuplicateMember,
// ErrUnknownUser, ErrNameTaken (as *RequestError, or bare for the name).
func (s *Service) CreateChat(ctx context.Context, req NewChat) (Chat, error) {
	if req.CreatorID <= 0 || req.CreatorName == "" {
		return Chat{}, refuse(ErrInvalidInput, "the chat has no creator")
	}
	name, err := cleanName(req.Name)
	if err != nil {
		return Chat{}, err
	}
	if err := checkDescription(req.Description); err != nil {
		return Chat{}, err
	}
	if err := checkUsernames(req.Members, nil); err != nil {
		return Chat{}, err
	}
	found, err := s.lookup(ctx, req.Members)
	if err != nil {
		return Chat{}, fmt.Errorf("create chat: %w", err)
	}
	members := []Member{{ID: req.CreatorID, Username: req.CreatorName}}
	for _, m := range found {
		if m.ID != req.CreatorID { // the creator listed too: already in
			members = append(members, m)
		}
	}
	if err := s.checkChatSize(len(members), 0); err != nil {
		return Chat{}, err
	}
	c, err := s.store.CreateChat(ctx, Chat{
		Name: name, Description: req.Description, CreatorID: req.CreatorID, Members: members,
	})
	if err != nil {
		return Chat{}, fmt.Errorf("create chat: %w", err)
	}
	added := make([]int64, len(c.Members))
	for i, m := range c.Members {
		added[i] = m.ID
	}
	s.announce(ctx, Event{Kind: EventCreated, Chat: c, Added: added})
	return c, nil
}

// ChatEdit asks for a chat to be edited; nil and empty fields are left
// alone.
type ChatEdit struct {
	ActorID       int64
	ChatID        int64
	Name          *string
	Description   *string
	AddMembers    []string
	RemoveMembers []string
}

// UpdateChat edits a chat for its creator. Adding a member is a no-op;
// removing a user who is not a member, or the creator, is ErrInvalidInput,
// and so is an edit that would leave the chat with more than
// Config.MaxMembers members: that is decided in the store's transaction,
// on the members it holds locked, so that concurrent edits cannot pass
// the bound together.
// Errors: ErrChatNotFound, ErrNotAMember, ErrNotCreator (also for every
// "everyone" chat), and those of CreateChat.
//
// After a change it announces one event: EventUpdated when the name or
// description changed (carrying Added and Removed when the members changed
// in the same edit), EventMembers when only the members did; an edit that
// changes nothing announces nothing.
func (s *Service) UpdateChat(ctx context.Context, e ChatEdit) (Chat, error) {
	// Permission before anything else, so that nobody else learns whether
	// usernames exist. A chat's creator and "everyone" flag never change,
	// and the creator cannot be removed, so the answer holds; the
	// transaction below checks again all the same.
	if err := s.checkEditor(ctx, e.ChatID, e.ActorID); err != nil {
		return Chat{}, fmt.Errorf("update chat: %w", err)
	}
	var name *string
	if e.Name != nil {
		n, err := cleanName(*e.Name)
		if err != nil {
			return Chat{}, err
		}
		name = &n
	}
	if e.Description != nil {
		if err := checkDescription(*e.Description); err != nil {
			return Chat{}, err
		}
	}
	if err := checkUsernames(e.AddMembers, e.RemoveMembers); err != nil {
		return Chat{}, err
	}
	// One lookup resolves both lists, outside the transaction.
	found, err := s.lookup(ctx, append(append([]string(nil), e.AddMembers...), e.RemoveMembers...))
	if err != nil {
		return Chat{}, fmt.Errorf("update chat: %w", err)
	}
	add, remove := found[:len(e.AddMembers)], found[len(e.AddMembers):]

	var applied Change
	c, err := s.store.UpdateChat(ctx, e.ChatID, func(cur Chat) (Change, error) {
		applied = Change{}
		if err := mayEdit(cur, e.ActorID, cur.hasMember(e.ActorID)); err != nil {
			return Change{}, err
		}
		var ch Change
		if name != nil && *name != cur.Name {
			ch.Name = name
		}
		if e.Description != nil && *e.Description != cur.Description {
			ch.Description = e.Description
		}
		for _, m := range add {
			if !cur.hasMember(m.ID) {
				ch.Add = append(ch.Add, m)
			}
		}
		for _, m := range remove {
			switch {
			case m.ID == cur.CreatorID:
				return Change{}, refuse(ErrInvalidInput, "the creator %q cannot be removed", m.Username)
			case !cur.hasMember(m.ID):
				return Change{}, refuse(ErrInvalidInput, "%q is not a member of the chat", m.Username)
			}
			ch.Remove = append(ch.Remove, m.ID)
		}
		// ch.Add holds only users not yet members and ch.Remove only
		// members: the count after the edit is exact.
		if err := s.checkChatSize(len(cur.Members)+len(ch.Add)-len(ch.Remove), len(cur.Members)); err != nil {
			return Change{}, err
		}
		applied = ch
		return ch, nil
	})
	if err != nil {
		if s.members != nil && len(applied.Remove) > 0 {
			// The commit may have happened (its answer lost): forgetting
			// grants costs a query at most.
			s.members.Removed(e.ChatID, applied.Remove)
		}
		return Chat{}, fmt.Errorf("update chat: %w", err)
	}
	if applied.empty() {
		return c, nil
	}
	if s.members != nil && len(applied.Remove) > 0 {
		// Before the answer: the removed are refused from the next send
		// on, here at once, elsewhere when the event arrives.
		s.members.Removed(e.ChatID, applied.Remove)
	}
	ev := Event{Kind: EventMembers, Chat: c, Removed: applied.Remove}
	if applied.Name != nil || applied.Description != nil {
		ev.Kind = EventUpdated
	}
	for _, m := range applied.Add {
		ev.Added = append(ev.Added, m.ID)
	}
	s.announce(ctx, ev)
	return c, nil
}

// announce publishes ev. The change is committed by now: a failure is
// logged, not returned, so that the client does not retry a change that
// happened. Members online learn of it at their next reload.
func (s *Service) announce(ctx context.Context, ev Event) {
	if err := s.events.ChatChanged(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "announce chat change", "chat_id", ev.Chat.ID, "kind", string(ev.Kind), "err", err)
	}
}

// lookup resolves usernames (none: no call) and refuses one user listed
// under two names.
func (s *Service) lookup(ctx context.Context, names []string) ([]Member, error) {
	if len(names) == 0 {
		return nil, nil
	}
	users, err := s.users.Lookup(ctx, names)
	if err != nil {
		return nil, fmt.Errorf("look up members: %w", err)
	}
	if len(users) != len(names) {
		return nil, fmt.Errorf("look up members: %d users for %d names", len(users), len(names))
	}
	seen := make(map[int64]string, len(users))
	for i, u := range users {
		if first, ok := seen[u.ID]; ok {
			return nil, refuse(ErrDuplicateMember, "%q and %q are the same user", first, names[i])
		}
		seen[u.ID] = names[i]
	}
	return users, nil
}

// checkChatSize refuses a chat that would have more than s.maxMembers
// members after a change, unless it had at least as many before (a chat
// stored over the bound, before there was one, may still be renamed, lose
// members or swap them, but not grow).
func (s *Service) checkChatSize(after, before int) error {
	if after > s.maxMembers && after > before {
		return refuse(ErrInvalidInput, "a chat has at most %d members", s.maxMembers)
	}
	return nil
}

// checkEditor decides whether actor may edit chat from a plain read.
func (s *Service) checkEditor(ctx context.Context, chatID, actor int64) error {
	c, err := s.store.Chat(ctx, chatID)
	if err != nil {
		return err
	}
	member := c.Everyone || c.CreatorID == actor
	if !member {
		if member, err = s.store.IsMember(ctx, chatID, actor); err != nil {
			return err
		}
	}
	return mayEdit(c, actor, member)
}

// mayEdit: the creator may edit a chat; nobody may edit an "everyone" chat
// or a direct chat.
func mayEdit(c Chat, actor int64, member bool) error {
	switch {
	case c.Everyone:
		return refuse(ErrNotCreator, "nobody can edit %q", c.Name)
	case c.Direct && member:
		return refuse(ErrNotCreator, "nobody can edit a direct chat")
	case c.Direct:
		return ErrNotAMember
	case c.CreatorID == actor:
		return nil
	case member:
		return refuse(ErrNotCreator, "only the chat's creator can edit it")
	}
	return ErrNotAMember
}

// checkMember checks membership through the member cache, if any.
func (s *Service) checkMember(ctx context.Context, chatID, userID int64) error {
	return memberError(s.check(ctx, userID, chatID))
}

// memberError returns a membership check's answer as the service's error.
func memberError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotAMember):
		return ErrNotAMember
	}
	return fmt.Errorf("check member: %w", err)
}

// cleanName trims name and checks it.
func cleanName(name string) (string, error) {
	if !utf8.ValidString(name) {
		return "", refuse(ErrInvalidInput, "the name is not valid UTF-8")
	}
	name = strings.TrimSpace(name)
	switch n := utf8.RuneCountInString(name); {
	case n == 0:
		return "", refuse(ErrInvalidInput, "the name is empty")
	case n > MaxNameRunes:
		return "", refuse(ErrInvalidInput, "the name is longer than %d characters", MaxNameRunes)
	case strings.ContainsFunc(name, unicode.IsControl):
		return "", refuse(ErrInvalidInput, "the name holds a control character")
	}
	return name, nil
}

func checkDescription(d string) error {
	switch {
	case !utf8.ValidString(d):
		return refuse(ErrInvalidInput, "the description is not valid UTF-8")
	case strings.IndexByte(d, 0) >= 0:
		return refuse(ErrInvalidInput, "the description holds a NUL character")
	case utf8.RuneCountInString(d) > MaxDescriptionRunes:
		return refuse(ErrInvalidInput, "the description is longer than %d characters", MaxDescriptionRunes)
	}
	return nil
}

// checkUsernames bounds the usernames of one request and refuses one name
// listed twice, in any letter case, in either list or across both.
// Usernames are ASCII, so ToLower folds them as the auth service does.
func checkUsernames(add, remove []string) error {
	if n := len(add) + len(remove); n > MaxMembersPerRequest {
		return refuse(ErrInvalidInput, "at most %d members per request, not %d", MaxMembersPerRequest, n)
	}
	seen := make(map[string]string, len(add)+len(remove))
	for _, list := range [][]string{add, remove} {
		for _, name := range list {
			key := strings.ToLower(name)
			if first, ok := seen[key]; ok {
				if first == name {
					return refuse(ErrDuplicateMember, "%q is listed twice", name)
				}
				return refuse(ErrDuplicateMember, "%q and %q are the same user", first, name)
			}
			seen[key] = name
		}
	}
	return nil
}

// validate checks a message, an edit or a deletion: an edit's text has the
// rules of a message's, a deletion has none.
func validate(m Message) error {
	switch {
	case m.ChatID <= 0:
		return fmt.Errorf("%w: chat_id must be positive", ErrInvalidMessage)
	case m.SenderID <= 0 || m.Sender == "":
		return fmt.Errorf("%w: no sender", ErrInvalidMessage)
	case !protocol.ValidClientMsgID(m.ClientMsgID):
		return fmt.Errorf("%w: client_msg_id must be 1 to %d printable characters without spaces", ErrInvalidMessage, protocol.MaxClientMsgIDLen)
	}
	switch m.Kind {
	case protocol.KindMessage:
		return validateText(m.Text)
	case protocol.KindEdit, protocol.KindDelete:
		if m.TargetSeq <= 0 {
			return fmt.Errorf("%w: seq (the message to %s) must be positive", ErrInvalidMessage, m.Kind)
		}
		if m.Kind == protocol.KindDelete {
			if m.Text != "" {
				return fmt.Errorf("%w: a delete has no text", ErrInvalidMessage)
			}
			return nil
		}
		return validateText(m.Text)
	}
	return fmt.Errorf("%w: unknown kind %q", ErrInvalidMessage, m.Kind)
}

func validateText(text string) error {
	switch {
	case !utf8.ValidString(text):
		return fmt.Errorf("%w: text is not valid UTF-8", ErrInvalidMessage)
	case strings.IndexByte(text, 0) >= 0:
		// PostgreSQL's text cannot hold it: the history writer could
		// never store the message.
		return fmt.Errorf("%w: text holds a NUL character", ErrInvalidMessage)
	case strings.TrimSpace(text) == "":
		return fmt.Errorf("%w: text is empty", ErrInvalidMessage)
	case utf8.RuneCountInString(text) > protocol.MaxTextRunes:
		return fmt.Errorf("%w: text is longer than %d characters", ErrInvalidMessage, protocol.MaxTextRunes)
	}
	return nil
}

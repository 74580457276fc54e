// Package upstream is the gateway's client of the other services: every
// call is a NATS request with a timeout and the caller's trace context.
package upstream

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
)

// Client calls auth, chat and history.
type Client struct {
	bus     *natsbus.Client
	subj    subjects.Subjects
	timeout time.Duration
}

// New returns a client whose requests time out after timeout.
func New(bus *natsbus.Client, subj subjects.Subjects, timeout time.Duration) *Client {
	return &Client{bus: bus, subj: subj, timeout: timeout}
}

func call[Resp any](ctx context.Context, c *Client, subject string, req any) (Resp, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var resp Resp
	err := c.bus.Request(ctx, subject, req, &resp)
	return resp, err
}

// Register creates an account.
func (c *Client) Register(ctx context.Context, username, password string) (busapi.User, error) {
	return call[busapi.User](ctx, c, c.subj.AuthRegister(), busapi.RegisterRequest{Username: username, Password: password})
}

// Login opens a session.
func (c *Client) Login(ctx context.Context, username, password string) (busapi.Session, error) {
	return call[busapi.Session](ctx, c, c.subj.AuthLogin(), busapi.LoginRequest{Username: username, Password: password})
}

// Logout revokes a session.
func (c *Client) Logout(ctx context.Context, token string) error {
	_, err := call[struct{}](ctx, c, c.subj.AuthLogout(), busapi.SessionRequest{Token: token})
	return err
}

// Session resolves a session token.
func (c *Client) Session(ctx context.Context, token string) (busapi.Session, error) {
	return call[busapi.Session](ctx, c, c.subj.AuthSession(), busapi.SessionRequest{Token: token})
}

// Send asks the chat service to accept a message.
func (c *Client) Send(ctx context.Context, req busapi.SendRequest) (busapi.SendResult, error) {
	return call[busapi.SendResult](ctx, c, c.subj.ChatSend(), req)
}

// Change asks the chat service to accept an edit or a deletion.
func (c *Client) Change(ctx context.Context, req busapi.ChangeRequest) (busapi.SendResult, error) {
	return call[busapi.SendResult](ctx, c, c.subj.ChatChange(), req)
}

// History reads a page of a chat's messages.
func (c *Client) History(ctx context.Context, req busapi.HistoryRequest) (busapi.HistoryPage, error) {
	return call[busapi.HistoryPage](ctx, c, c.subj.HistoryPage(), req)
}

// HistoryJSON reads a page of a chat's messages as the history service
// encoded it (a busapi.HistoryPage), for the HTTP API to pass on as it is.
func (c *Client) HistoryJSON(ctx context.Context, req busapi.HistoryRequest) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.bus.RequestJSON(ctx, c.subj.HistoryPage(), req)
}

// ListChats returns the user's chats.
func (c *Client) ListChats(ctx context.Context, userID int64) ([]busapi.Chat, error) {
	r, err := call[busapi.ChatList](ctx, c, c.subj.ChatList(), busapi.UserChatsRequest{UserID: userID})
	return r.Chats, err
}

// UserChats returns the ids of the user's chats, without their state: for
// a new connection, whose hello lists only ids.
func (c *Client) UserChats(ctx context.Context, userID int64) ([]int64, error) {
	r, err := call[busapi.UserChats](ctx, c, c.subj.ChatUserChats(), busapi.UserChatsRequest{UserID: userID})
	return r.ChatIDs, err
}

// ListChatsWithCounts returns the user's chats with their newest sequence,
// the user's read position and unread count (left out, with
// UnreadUnavailable set, when the history service did not answer the chat
// service).
func (c *Client) ListChatsWithCounts(ctx context.Context, userID int64) (busapi.ChatList, error) {
	return call[busapi.ChatList](ctx, c, c.subj.ChatList(), busapi.UserChatsRequest{UserID: userID, Counts: true})
}

// StartDirect returns the direct chat of two users, creating it if needed.
func (c *Client) StartDirect(ctx context.Context, req busapi.DirectRequest) (busapi.DirectChat, error) {
	return call[busapi.DirectChat](ctx, c, c.subj.ChatDirect(), req)
}

// Read moves a user's read position in a chat forward.
func (c *Client) Read(ctx context.Context, req busapi.ReadRequest) (busapi.ReadResult, error) {
	return call[busapi.ReadResult](ctx, c, c.subj.ChatRead(), req)
}

// CreateChat creates a chat.
func (c *Client) CreateChat(ctx context.Context, req busapi.CreateChatRequest) (busapi.Chat, error) {
	return call[busapi.Chat](ctx, c, c.subj.ChatCreate(), req)
}

// UpdateChat edits a chat.
func (c *Client) UpdateChat(ctx context.Context, req busapi.UpdateChatRequest) (busapi.Chat, error) {
	return call[busapi.Chat](ctx, c, c.subj.ChatUpdate(), req)
}

// GetChat returns one chat to one of its members.
func (c *Client) GetChat(ctx context.Context, userID, chatID int64) (busapi.Chat, error) {
	return call[busapi.Chat](ctx, c, c.subj.ChatGet(), busapi.ChatRequest{UserID: userID, ChatID: chatID})
}

// Latest returns the newest stored sequence of each of the chats, asking
// history for at most busapi.MaxLatestChats at a time (a gateway's
// connections may be in many more chats than that together).
func (c *Client) Latest(ctx context.Context, chatIDs []int64) (map[string]int64, error) {
	seqs := make(map[string]int64, len(chatIDs))
	for part := range slices.Chunk(chatIDs, busapi.MaxLatestChats) {
		r, err := call[busapi.Latest](ctx, c, c.subj.HistoryLatest(), busapi.LatestRequest{ChatIDs: part})
		if err != nil {
			return nil, err
		}
		maps.Copy(seqs, r.Seqs)
	}
	return seqs, nil
}

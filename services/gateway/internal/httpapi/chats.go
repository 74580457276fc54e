package httpapi

import (
	"net/http"
	"strconv"

	"github.com/gin-gonic/gin"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
)

// listChats answers the user's chats with unread counts. When the history
// service could not count, the chats come with read positions only and
// "unread_unavailable": true.
func (a *API) listChats(c *gin.Context) {
	list, err := a.up.ListChatsWithCounts(c.Request.Context(), currentUser(c).ID)
	if err != nil {
		failErr(c, err)
		return
	}
	if list.Chats == nil {
		list.Chats = []busapi.Chat{}
	}
	c.JSON(http.StatusOK, list)
}

type createChatBody struct {
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Members     []string `json:"members"`
}

func (a *API) createChat(c *gin.Context) {
	var body createChatBody
	if !bindJSON(c, &body, "name, description and members") {
		return
	}
	u := currentUser(c)
	chat, err := a.up.CreateChat(c.Request.Context(), busapi.CreateChatRequest{
		CreatorID: u.ID, CreatorName: u.Username, Name: body.Name, Description: body.Description, Members: body.Members,
	})
	if err != nil {
		failErr(c, err)
		return
	}
	c.JSON(http.StatusCreated, gin.H{"chat": chat})
}

// chatID parses the :id parameter; an id that cannot exist is an unknown
// chat.
func chatID(c *gin.Context) (int64, bool) {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil || id <= 0 {
		fail(c, protocol.CodeChatNotFound, "no such chat")
		return 0, false
	}
	return id, true
}

func (a *API) getChat(c *gin.Context) {
	id, ok := chatID(c)
	if !ok {
		return
	}
	chat, err := a.up.GetChat(c.Request.Context(), currentUser(c).ID, id)
	if err != nil {
		failErr(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"chat": chat})
}

type updateChatBody struct {
	Name          *string  `json:"name"`
	Description   *string  `json:"description"`
	AddMembers    []string `json:"add_members"`
	RemoveMembers []string `json:"remove_members"`
}

func (a *API) updateChat(c *gin.Context) {
	id, ok := chatID(c)
	if !ok {
		return
	}
	var body updateChatBody
	if !bindJSON(c, &body, "name, description, add_members or remove_members") {
		return
	}
	u := currentUser(c)
	chat, err := a.up.UpdateChat(c.Request.Context(), busapi.UpdateChatRequest{
		ActorID: u.ID, ActorName: u.Username, ChatID: id,
		Name: body.Name, Description: body.Description, AddMembers: body.AddMembers, RemoveMembers: body.RemoveMembers,
	})
	if err != nil {
		failErr(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"chat": chat})
}

func (a *API) history(c *gin.Context) {
	id, ok := chatID(c)
	if !ok {
		return
	}
	limit := 50
	var err error
	if s := c.Query("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 100 {
			fail(c, protocol.CodeInvalidInput, "limit must be 1 to 100")
			return
		}
	}
	var before, after int64
	if s := c.Query("before"); s != "" {
		if before, err = strconv.ParseInt(s, 10, 64); err != nil || before < 1 {
			fail(c, protocol.CodeInvalidInput, "before must be a positive sequence number")
			return
		}
	}
	if s := c.Query("after"); s != "" {
		if after, err = strconv.ParseInt(s, 10, 64); err != nil || after < 0 {
			fail(c, protocol.CodeInvalidInput, "after must be a sequence number")
			return
		}
	}
	if before > 0 && after > 0 {
		fail(c, protocol.CodeInvalidInput, "give before or after, not both")
		return
	}
	// The history service checks with the chat service, which owns
	// membership, that the user may read the chat. Its page (a
	// busapi.HistoryPage, messages never null) is the answer as it is:
	// decoding and encoding it again here would cost more than the rest of
	// the request.
	page, err := a.up.HistoryJSON(c.Request.Context(), busapi.HistoryRequest{UserID: currentUser(c).ID, ChatID: id, BeforeSeq: before, AfterSeq: after, Limit: limit})
	if err != nil {
		failErr(c, err)
		return
	}
	// With its length known, the answer goes out in one piece, not
	// chunked.
	c.Header("Content-Length", strconv.Itoa(len(page)))
	c.Data(http.StatusOK, "application/json; charset=utf-8", page)
}

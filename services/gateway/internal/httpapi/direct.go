package httpapi

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/communications/communications/libs/busapi"
)

type directBody struct {
	Username string `json:"username"`
}

// startDirect answers the direct chat of the user with another, by name:
// 201 when this request created it, 200 when it existed.
func (a *API) startDirect(c *gin.Context) {
	var body directBody
	if !bindJSON(c, &body, "username") {
		return
	}
	u := currentUser(c)
	dc, err := a.up.StartDirect(c.Request.Context(), busapi.DirectRequest{UserID: u.ID, Username: u.Username, Other: body.Username})
	if err != nil {
		failErr(c, err)
		return
	}
	status := http.StatusOK
	if dc.Created {
		status = http.StatusCreated
	}
	c.JSON(status, gin.H{"chat": dc.Chat})
}

type readBody struct {
	Seq int64 `json:"seq"`
}

// readPosition is the answer to a read: the position after it.
type readPosition struct {
	ChatID int64 `json:"chat_id"`
	Seq    int64 `json:"seq"`
	Unread int   `json:"unread"`
}

// markRead moves the user's read position in a chat forward; every
// websocket of the user gets read_position when it moved.
func (a *API) markRead(c *gin.Context) {
	id, ok := chatID(c)
	if !ok {
		return
	}
	var body readBody
	if !bindJSON(c, &body, "seq") {
		return
	}
	res, err := a.up.Read(c.Request.Context(), busapi.ReadRequest{UserID: currentUser(c).ID, ChatID: id, Seq: body.Seq})
	if err != nil {
		failErr(c, err)
		return
	}
	c.JSON(http.StatusOK, readPosition{ChatID: res.ChatID, Seq: res.Seq, Unread: res.Unread})
}

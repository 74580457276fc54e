package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/debugsrv"
	"github.com/communications/communications/libs/protocol"
)

// SessionCookie is the name of the session cookie.
const SessionCookie = "session"

// MaxBodyBytes bounds every request body; larger ones get 413.
const MaxBodyBytes = 64 << 10

// Upstream is what the HTTP API needs from the other services.
type Upstream interface {
	Register(ctx context.Context, username, password string) (busapi.User, error)
	Login(ctx context.Context, username, password string) (busapi.Session, error)
	Logout(ctx context.Context, token string) error
	Session(ctx context.Context, token string) (busapi.Session, error)
	UserChats(ctx context.Context, userID int64) ([]int64, error)
	History(ctx context.Context, req busapi.HistoryRequest) (busapi.HistoryPage, error)
}

// Websockets serves an upgraded connection for an authenticated user.
type Websockets interface {
	Serve(w http.ResponseWriter, r *http.Request, user busapi.User)
}

// Config tunes the API.
type Config struct {
	// AllowedOrigins lists the origins (scheme://host[:port]) allowed to
	// open websockets besides the gateway's own. Default: none.
	AllowedOrigins []string
	// SecureCookies marks the session cookie Secure (HTTPS only).
	SecureCookies bool
}

// API holds the HTTP handlers.
type API struct {
	log        *slog.Logger
	cfg        Config
	up         Upstream
	ws         Websockets
	ready      *debugsrv.Readiness
	tp         trace.TracerProvider
	propagator propagation.TextMapPropagator
}

// New returns the API.
func New(log *slog.Logger, cfg Config, up Upstream, ws Websockets, ready *debugsrv.Readiness, tp trace.TracerProvider, prop propagation.TextMapPropagator) *API {
	return &API{log: log, cfg: cfg, up: up, ws: ws, ready: ready, tp: tp, propagator: prop}
}

// logErrors logs, once, the internal errors handlers attached to the
// request; the client only ever sees their code.
func (a *API) logErrors(c *gin.Context) {
	c.Next()
	for _, e := range c.Errors {
		a.log.ErrorContext(c.Request.Context(), "request failed", "method", c.Request.Method, "route", c.FullPath(), "status", c.Writer.Status(), "err", e.Err)
	}
}

// limitBody caps request bodies at n bytes.
func limitBody(n int64) gin.HandlerFunc {
	return func(c *gin.Context) {
		if c.Request.ContentLength > n {
			fail(c, protocol.CodeRequestTooLarge, fmt.Sprintf("request body larger than %d bytes", n))
			return
		}
		c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, n)
		c.Next()
	}
}

// bindJSON decodes the body into v, answering 413 or 400 itself when it
// cannot.
func bindJSON(c *gin.Context, v any, what string) bool {
	if err := c.ShouldBindJSON(v); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			fail(c, protocol.CodeRequestTooLarge, fmt.Sprintf("request body larger than %d bytes", MaxBodyBytes))
			return false
		}
		fail(c, protocol.CodeBadRequest, "body must be JSON with "+what)
		return false
	}
	return true
}

type errorBody struct {
	Error busapi.Error `json:"error"`
}

// status maps protocol codes to HTTP statuses: the one place it is done.
func status(code protocol.Code) int {
	switch code {
	case protocol.CodeBadRequest, protocol.CodeInvalidInput, protocol.CodeInvalidMessage:
		return http.StatusBadRequest
	case protocol.CodeUnauthorized, protocol.CodeBadCredentials:
		return http.StatusUnauthorized
	case protocol.CodeForbidden, protocol.CodeNotAMember:
		return http.StatusForbidden
	case protocol.CodeNotFound, protocol.CodeChatNotFound:
		return http.StatusNotFound
	case protocol.CodeConflict, protocol.CodeUsernameTaken:
		return http.StatusConflict
	case protocol.CodeRateLimited:
		return http.StatusTooManyRequests
	case protocol.CodeUnavailable:
		return http.StatusServiceUnavailable
	case protocol.CodeFrameTooLarge, protocol.CodeRequestTooLarge:
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusInternalServerError
}

func fail(c *gin.Context, code protocol.Code, msg string) {
	c.AbortWithStatusJSON(status(code), errorBody{Error: busapi.Error{Code: code, Message: msg}})
}

// failErr answers with the code of err; internal details never reach the
// client.
func failErr(c *gin.Context, err error) {
	if be, ok := errors.AsType[*busapi.Error](err); ok && be.Code != protocol.CodeInternal {
		fail(c, be.Code, be.Message)
		return
	}
	_ = c.Error(err)
	fail(c, protocol.CodeInternal, "internal error")
}

func (a *API) healthz(c *gin.Context) { debugsrv.HealthzHandler(c.Writer, c.Request) }

func (a *API) readyz(c *gin.Context) { a.ready.ReadyzHandler(c.Writer, c.Request) }

func (a *API) notFound(c *gin.Context) { fail(c, protocol.CodeNotFound, "no such route") }

type credentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

func (a *API) register(c *gin.Context) {
	var req credentials
	if !bindJSON(c, &req, "username and password") {
		return
	}
	u, err := a.up.Register(c.Request.Context(), req.Username, req.Password)
	if err != nil {
		failErr(c, err)
		return
	}
	c.JSON(http.StatusCreated, gin.H{"user": u})
}

type loginResponse struct {
	User      busapi.User `json:"user"`
	Token     string      `json:"token"`
	ExpiresAt time.Time   `json:"expires_at"`
}

func (a *API) login(c *gin.Context) {
	var req credentials
	if !bindJSON(c, &req, "username and password") {
		return
	}
	s, err := a.up.Login(c.Request.Context(), req.Username, req.Password)
	if err != nil {
		failErr(c, err)
		return
	}
	http.SetCookie(c.Writer, &http.Cookie{
		Name: SessionCookie, Value: s.Token, Path: "/", Expires: s.ExpiresAt,
		HttpOnly: true, Secure: a.cfg.SecureCookies, SameSite: http.SameSiteLaxMode,
	})
	c.JSON(http.StatusOK, loginResponse{User: s.User, Token: s.Token, ExpiresAt: s.ExpiresAt})
}

func (a *API) logout(c *gin.Context) {
	token := sessionToken(c.Request)
	if token == "" {
		fail(c, protocol.CodeUnauthorized, "no session")
		return
	}
	if err := a.up.Logout(c.Request.Context(), token); err != nil {
		failErr(c, err)
		return
	}
	http.SetCookie(c.Writer, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: a.cfg.SecureCookies, SameSite: http.SameSiteLaxMode})
	c.Status(http.StatusNoContent)
}

// sessionToken reads the session from the Authorization header (bots and
// apps) or the session cookie (browsers). Tokens never travel in URLs.
func sessionToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if t, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
	}
	if ck, err := r.Cookie(SessionCookie); err == nil {
		return ck.Value
	}
	return ""
}

const userKey = "user"

func (a *API) authenticate(c *gin.Context) (busapi.User, bool) {
	token := sessionToken(c.Request)
	if token == "" {
		fail(c, protocol.CodeUnauthorized, "no session: log in first")
		return busapi.User{}, false
	}
	s, err := a.up.Session(c.Request.Context(), token)
	if err != nil {
		failErr(c, err)
		return busapi.User{}, false
	}
	return s.User, true
}

// authenticated is middleware that resolves the session.
func (a *API) authenticated(c *gin.Context) {
	u, ok := a.authenticate(c)
	if !ok {
		return
	}
	c.Set(userKey, u)
	c.Next()
}

func currentUser(c *gin.Context) busapi.User { return c.MustGet(userKey).(busapi.User) }

func (a *API) me(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"user": currentUser(c)}) }

func (a *API) listChats(c *gin.Context) {
	ids, err := a.up.UserChats(c.Request.Context(), currentUser(c).ID)
	if err != nil {
		failErr(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"chat_ids": ids})
}

func (a *API) history(c *gin.Context) {
	chatID, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil || chatID <= 0 {
		fail(c, protocol.CodeChatNotFound, "no such chat")
		return
	}
	limit := 50
	if s := c.Query("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 100 {
			fail(c, protocol.CodeInvalidInput, "limit must be 1 to 100")
			return
		}
	}
	var before int64
	if s := c.Query("before"); s != "" {
		if before, err = strconv.ParseInt(s, 10, 64); err != nil || before < 1 {
			fail(c, protocol.CodeInvalidInput, "before must be a positive sequence number")
			return
		}
	}
	ids, err := a.up.UserChats(c.Request.Context(), currentUser(c).ID)
	if err != nil {
		failErr(c, err)
		return
	}
	if !slices.Contains(ids, chatID) {
		fail(c, protocol.CodeNotAMember, "you are not a member of this chat")
		return
	}
	page, err := a.up.History(c.Request.Context(), busapi.HistoryRequest{ChatID: chatID, BeforeSeq: before, Limit: limit})
	if err != nil {
		failErr(c, err)
		return
	}
	if page.Messages == nil {
		page.Messages = []protocol.Message{}
	}
	c.JSON(http.StatusOK, page)
}

// websocket checks the Origin and the session, then hands the request to
// the websocket server.
func (a *API) websocket(c *gin.Context) {
	if !a.originAllowed(c.Request) {
		fail(c, protocol.CodeForbidden, "websocket from a foreign origin")
		return
	}
	u, ok := a.authenticate(c)
	if !ok {
		return
	}
	a.ws.Serve(c.Writer, c.Request, u)
}

// originAllowed accepts requests without an Origin (not from a browser),
// from the gateway's own host, or from a configured origin.
func (a *API) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	return slices.ContainsFunc(a.cfg.AllowedOrigins, func(o string) bool { return strings.EqualFold(o, origin) })
}

package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

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
	// ResolveSession is Session for a new websocket: current reports,
	// once the connection is registered, whether the answer may stand for
	// the connection's own session check (see upstream.CachedSessions).
	ResolveSession(ctx context.Context, token string) (s busapi.Session, current func() bool, err error)
	ListChatsWithCounts(ctx context.Context, userID int64) (busapi.ChatList, error)
	CreateChat(ctx context.Context, req busapi.CreateChatRequest) (busapi.Chat, error)
	UpdateChat(ctx context.Context, req busapi.UpdateChatRequest) (busapi.Chat, error)
	GetChat(ctx context.Context, userID, chatID int64) (busapi.Chat, error)
	HistoryJSON(ctx context.Context, req busapi.HistoryRequest) (json.RawMessage, error)
	StartDirect(ctx context.Context, req busapi.DirectRequest) (busapi.DirectChat, error)
	Read(ctx context.Context, req busapi.ReadRequest) (busapi.ReadResult, error)
}

// Websockets serves an upgraded connection for an authenticated session
// (token is the session's token, kept to check the session again; current,
// if not nil, says whether s may stand for that check). Admit waits for a
// turn to set a connection up, first come first served; the caller calls
// release once Serve has returned. CheckHandshake refuses, before the wait,
// a request Serve would refuse without asking anyone.
type Websockets interface {
	CheckHandshake(r *http.Request) error
	Admit(ctx context.Context) (release func(), err error)
	Serve(w http.ResponseWriter, r *http.Request, s busapi.Session, token string, current func() bool)
}

// Config tunes the API.
type Config struct {
	// AllowedOrigins lists the origins (scheme://host[:port]) allowed to
	// open websockets and send cookie-authenticated changes besides the
	// gateway's own. Default: none.
	AllowedOrigins []string
	// SecureCookies marks the session cookie Secure (HTTPS only).
	SecureCookies bool
	// WebDir holds the built web app; empty: no web app is served.
	WebDir string
}

// Limits are the rate limits of register and login (per address and per
// username) and of the changes a user makes over HTTP (per user); nil
// limiters: none.
type Limits struct {
	PerAddress  RateLimiter
	PerUsername RateLimiter
	PerUser     RateLimiter
}

// API holds the HTTP handlers.
type API struct {
	log        *slog.Logger
	cfg        Config
	up         Upstream
	ws         Websockets
	limits     Limits
	ready      *debugsrv.Readiness
	tp         trace.TracerProvider
	propagator propagation.TextMapPropagator
}

// New returns the API.
func New(log *slog.Logger, cfg Config, up Upstream, ws Websockets, limits Limits, ready *debugsrv.Readiness, tp trace.TracerProvider, prop propagation.TextMapPropagator) *API {
	return &API{log: log, cfg: cfg, up: up, ws: ws, limits: limits, ready: ready, tp: tp, propagator: prop}
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
	case protocol.CodeBadRequest, protocol.CodeInvalidInput, protocol.CodeInvalidMessage,
		protocol.CodeUnknownUser, protocol.CodeDuplicateMember:
		return http.StatusBadRequest
	case protocol.CodeUnauthorized, protocol.CodeBadCredentials:
		return http.StatusUnauthorized
	case protocol.CodeForbidden, protocol.CodeNotAMember, protocol.CodeNotCreator, protocol.CodeCSRF:
		return http.StatusForbidden
	case protocol.CodeNotFound, protocol.CodeChatNotFound:
		return http.StatusNotFound
	case protocol.CodeConflict, protocol.CodeUsernameTaken, protocol.CodeNameTaken:
		return http.StatusConflict
	case protocol.CodeRateLimited:
		return http.StatusTooManyRequests
	case protocol.CodeUnavailable:
		return http.StatusServiceUnavailable
	case protocol.CodeFrameTooLarge, protocol.CodeRequestTooLarge:
		return http.StatusRequestEntityTooLarge
	case protocol.CodeUnsupportedMediaType:
		return http.StatusUnsupportedMediaType
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

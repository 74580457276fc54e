package httpapi

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
)

// RateLimiter counts attempts under a key across all gateway replicas.
type RateLimiter interface {
	// Allow reports whether one more attempt under key is allowed, and if
	// not, how long to wait.
	Allow(ctx context.Context, key string) (ok bool, retryAfter time.Duration, err error)
}

type credentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// limited applies the per-address and per-username limits of register and
// login. It answers 429 itself and reports false when over a limit.
func (a *API) limited(c *gin.Context, action, username string) bool {
	if a.limits.PerAddress == nil || a.limits.PerUsername == nil {
		return true
	}
	keys := []struct {
		l   RateLimiter
		key string
	}{
		{a.limits.PerAddress, action + ":addr:" + c.ClientIP()},
		{a.limits.PerUsername, action + ":user:" + strings.ToLower(username)},
	}
	for _, k := range keys {
		ok, retry, err := k.l.Allow(c.Request.Context(), k.key)
		if err != nil {
			// Redis is down: let the request through rather than lock
			// everyone out; auth still bounds its hashing work.
			_ = c.Error(fmt.Errorf("rate limit: %w", err))
			continue
		}
		if !ok {
			c.Header("Retry-After", strconv.Itoa(int(math.Ceil(retry.Seconds()))))
			fail(c, protocol.CodeRateLimited, "too many attempts; try again later")
			return false
		}
	}
	return true
}

func (a *API) register(c *gin.Context) {
	var req credentials
	if !bindJSON(c, &req, "username and password") {
		return
	}
	if !a.limited(c, "register", req.Username) {
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
	if !a.limited(c, "login", req.Username) {
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
	token, _ := sessionToken(c.Request)
	if token == "" {
		fail(c, protocol.CodeUnauthorized, "no session")
		return
	}
	// Clear the cookie whatever the answer: the session is over for
	// this browser either way.
	http.SetCookie(c.Writer, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: a.cfg.SecureCookies, SameSite: http.SameSiteLaxMode})
	if err := a.up.Logout(c.Request.Context(), token); err != nil {
		failErr(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}

// sessionToken reads the session from the Authorization header (bots and
// apps) or the session cookie (browsers), and says whether it came from the
// cookie. Tokens never travel in URLs.
func sessionToken(r *http.Request) (token string, fromCookie bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		if t, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(t), false
		}
	}
	if ck, err := r.Cookie(SessionCookie); err == nil {
		return ck.Value, true
	}
	return "", false
}

const sessionKey = "session"

func (a *API) authenticate(c *gin.Context) (busapi.Session, bool) {
	token, _ := sessionToken(c.Request)
	if token == "" {
		fail(c, protocol.CodeUnauthorized, "no session: log in first")
		return busapi.Session{}, false
	}
	s, err := a.up.Session(c.Request.Context(), token)
	if err != nil {
		failErr(c, err)
		return busapi.Session{}, false
	}
	return s, true
}

// authenticated is middleware that resolves the session.
func (a *API) authenticated(c *gin.Context) {
	s, ok := a.authenticate(c)
	if !ok {
		return
	}
	c.Set(sessionKey, s)
	c.Next()
}

func currentUser(c *gin.Context) busapi.User { return c.MustGet(sessionKey).(busapi.Session).User }

func (a *API) me(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"user": currentUser(c)}) }

// csrf refuses state-changing requests authenticated by the session cookie
// that do not come from an allowed origin. Bearer tokens are not ambient
// credentials and are not checked.
func (a *API) csrf(c *gin.Context) {
	switch c.Request.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		c.Next()
		return
	}
	if _, fromCookie := sessionToken(c.Request); !fromCookie {
		c.Next()
		return
	}
	origin := c.Request.Header.Get("Origin")
	if origin == "" {
		if ref, err := url.Parse(c.Request.Header.Get("Referer")); err == nil && ref.Host != "" {
			origin = ref.Scheme + "://" + ref.Host
		}
	}
	if origin == "" || !a.allowedOrigin(c.Request, origin) {
		fail(c, protocol.CodeCSRF, "request from a foreign or unknown origin")
		return
	}
	c.Next()
}

// websocket checks the Origin and the session, then hands the request to
// the websocket server.
func (a *API) websocket(c *gin.Context) {
	if origin := c.Request.Header.Get("Origin"); origin != "" && !a.allowedOrigin(c.Request, origin) {
		fail(c, protocol.CodeForbidden, "websocket from a foreign origin")
		return
	}
	s, ok := a.authenticate(c)
	if !ok {
		return
	}
	a.ws.Serve(c.Writer, c.Request, s)
}

// allowedOrigin accepts the gateway's own host and the configured origins.
func (a *API) allowedOrigin(r *http.Request, origin string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	return slices.ContainsFunc(a.cfg.AllowedOrigins, func(o string) bool { return strings.EqualFold(o, origin) })
}

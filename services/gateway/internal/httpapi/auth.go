package httpapi

import (
	"context"
	"fmt"
	"math"
	"mime"
	"net"
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
	// Allow counts n attempts under key (n = 0 only checks) and reports
	// whether they are allowed, and if not, how long to wait.
	Allow(ctx context.Context, key string, n int) (ok bool, retryAfter time.Duration, err error)
	// Reset clears the attempts counted under key.
	Reset(ctx context.Context, key string) error
}

type credentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
	// Token asks login to return the session token in the body, for apps
	// and bots that authenticate with Authorization: Bearer. Browsers use
	// the HttpOnly cookie and never see the token.
	Token bool `json:"token"`
}

// addressKey is the client address that rate limits count: the address
// itself for IPv4, its /64 network for IPv6 (one subscriber's usual share).
func addressKey(ip string) string {
	addr := net.ParseIP(ip)
	if addr == nil || addr.To4() != nil {
		return ip
	}
	return addr.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// limitAddress applies the per-address limit of register and login. It
// answers 429 itself and reports false when over the limit.
func (a *API) limitAddress(c *gin.Context, action string) bool {
	if a.limits.PerAddress == nil {
		return true
	}
	return a.allow(c, a.limits.PerAddress, action+":addr:"+addressKey(c.ClientIP()), 1)
}

// limitUsername applies the per-username limit: n is 1 to count an
// attempt, 0 only to check that the name is not over its limit.
func (a *API) limitUsername(c *gin.Context, action, username string, n int) bool {
	if a.limits.PerUsername == nil {
		return true
	}
	return a.allow(c, a.limits.PerUsername, action+":user:"+strings.ToLower(username), n)
}

// limitWrites applies the per-user limit of changes (creating and editing
// chats, starting direct chats, moving read positions): each costs the
// services behind the gateway a request and a write, as a websocket send
// does, whose per-connection limit cannot count requests made over HTTP.
func (a *API) limitWrites(c *gin.Context) {
	if a.limits.PerUser == nil {
		c.Next()
		return
	}
	if a.allow(c, a.limits.PerUser, "write:uid:"+strconv.FormatInt(currentUser(c).ID, 10), 1) {
		c.Next()
	}
}

func (a *API) allow(c *gin.Context, l RateLimiter, key string, n int) bool {
	ok, retry, err := l.Allow(c.Request.Context(), key, n)
	if err != nil {
		// Redis is down: let the request through rather than lock
		// everyone out; auth still bounds its hashing work.
		_ = c.Error(fmt.Errorf("rate limit: %w", err))
		return true
	}
	if !ok {
		c.Header("Retry-After", strconv.Itoa(int(math.Ceil(retry.Seconds()))))
		fail(c, protocol.CodeRateLimited, "too many attempts; try again later")
		return false
	}
	return true
}

func (a *API) register(c *gin.Context) {
	var req credentials
	if !bindJSON(c, &req, "username and password") {
		return
	}
	if !a.limitAddress(c, "register") || !a.limitUsername(c, "register", req.Username, 1) {
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
	Token     string      `json:"token,omitempty"`
	ExpiresAt time.Time   `json:"expires_at"`
}

func (a *API) login(c *gin.Context) {
	var req credentials
	if !bindJSON(c, &req, "username and password") {
		return
	}
	// Per username every attempt counts before the password is checked (so
	// parallel guesses cannot slip past the limit together), and a
	// successful login clears the count: guessing at someone's password is
	// slowed down, logging in often is not.
	if !a.limitAddress(c, "login") || !a.limitUsername(c, "login", req.Username, 1) {
		return
	}
	s, err := a.up.Login(c.Request.Context(), req.Username, req.Password)
	if err != nil {
		failErr(c, err)
		return
	}
	if a.limits.PerUsername != nil {
		if err := a.limits.PerUsername.Reset(c.Request.Context(), "login:user:"+strings.ToLower(req.Username)); err != nil {
			_ = c.Error(fmt.Errorf("rate limit reset: %w", err))
		}
	}
	http.SetCookie(c.Writer, &http.Cookie{
		Name: SessionCookie, Value: s.Token, Path: "/", Expires: s.ExpiresAt,
		HttpOnly: true, Secure: a.cfg.SecureCookies, SameSite: http.SameSiteLaxMode,
	})
	resp := loginResponse{User: s.User, ExpiresAt: s.ExpiresAt}
	if req.Token {
		resp.Token = s.Token
	}
	c.JSON(http.StatusOK, resp)
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

// csrf guards state-changing requests against cross-site forgery. A request
// whose Origin (or, without one, Referer) names another site is refused,
// whatever authenticates it: this also stops a forged login into the
// attacker's account. A request authenticated by the session cookie must
// name an allowed origin. Bodies must be JSON, which a cross-site form
// cannot send without a CORS preflight that the gateway never grants.
func (a *API) csrf(c *gin.Context) {
	switch c.Request.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		c.Next()
		return
	}
	origin := c.Request.Header.Get("Origin")
	if origin == "" {
		if ref, err := url.Parse(c.Request.Header.Get("Referer")); err == nil && ref.Host != "" {
			origin = ref.Scheme + "://" + ref.Host
		}
	}
	_, fromCookie := sessionToken(c.Request)
	if (origin != "" && !a.allowedOrigin(c.Request, origin)) || (origin == "" && fromCookie) {
		fail(c, protocol.CodeCSRF, "request from a foreign or unknown origin")
		return
	}
	if c.Request.ContentLength != 0 {
		if mt, _, err := mime.ParseMediaType(c.Request.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			fail(c, protocol.CodeUnsupportedMediaType, "the body must be application/json")
			return
		}
	}
	c.Next()
}

// answerWriteTimeout bounds, from the moment a websocket leaves the set-up
// queue (admitted or sent away by a drain), the writing of an answer that
// is not the upgrade (a refused session, a service that did not answer, the
// drain's 503): it outlasts the session lookup, which the request timeout
// bounds.
const answerWriteTimeout = 30 * time.Second

// websocket checks the Origin and what needs nobody's answer (a session
// token given, a websocket handshake without a body, a well-formed
// resume), waits for its turn to be set up (the websocket server bounds the
// set-ups at once and queues the rest in order), checks the session, then
// hands the request to the websocket server, which also learns whether the
// auth service's answer is current enough to stand for the connection's
// own check.
func (a *API) websocket(c *gin.Context) {
	if origin := c.Request.Header.Get("Origin"); origin != "" && !a.allowedOrigin(c.Request, origin) {
		fail(c, protocol.CodeForbidden, "websocket from a foreign origin")
		return
	}
	token, _ := sessionToken(c.Request)
	if token == "" {
		fail(c, protocol.CodeUnauthorized, "no session: log in first")
		return
	}
	if err := a.ws.CheckHandshake(c.Request); err != nil {
		failErr(c, err)
		return
	}
	// The wait for a turn counts against no timeout: the HTTP server's
	// read deadline is lifted while a handler runs (a request without a
	// body), and the set-up's own timeout starts once admitted. Its write
	// deadline, set when the request was read, may have passed during the
	// wait: a fresh one lets a refusal after it reach the client (the
	// upgrade lifts it).
	release, err := a.ws.Admit(c.Request.Context())
	if err == nil {
		defer release()
	}
	if c.Request.Context().Err() != nil {
		return // the client went away while it waited: no one to answer
	}
	if err := http.NewResponseController(c.Writer).SetWriteDeadline(time.Now().Add(answerWriteTimeout)); err != nil {
		a.log.WarnContext(c.Request.Context(), "websocket: no fresh write deadline after the wait", "err", err)
	}
	if err != nil {
		c.Header("Retry-After", "1")
		fail(c, protocol.CodeUnavailable, err.Error())
		return
	}
	s, current, err := a.up.ResolveSession(c.Request.Context(), token)
	if err != nil {
		if c.Request.Context().Err() != nil {
			return // the client went away: no one to answer, nothing failed
		}
		failErr(c, err)
		return
	}
	a.ws.Serve(c.Writer, c.Request, s, token, current)
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

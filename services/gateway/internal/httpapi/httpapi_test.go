package httpapi

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/communications/communications/libs/protocol"
)

func TestOriginAllowed(t *testing.T) {
	t.Parallel()
	a := &API{cfg: Config{AllowedOrigins: []string{"https://app.example.com"}}}
	tests := []struct {
		name   string
		host   string
		origin string
		want   bool
	}{
		{name: "no origin", host: "chat.example.com", want: false},
		{name: "same origin", host: "chat.example.com", origin: "https://chat.example.com", want: true},
		{name: "same origin with port", host: "127.0.0.1:8080", origin: "http://127.0.0.1:8080", want: true},
		{name: "allowed origin", host: "chat.example.com", origin: "https://app.example.com", want: true},
		{name: "foreign origin", host: "chat.example.com", origin: "https://evil.example", want: false},
		{name: "other port", host: "127.0.0.1:8080", origin: "http://127.0.0.1:9999", want: false},
		{name: "garbage", host: "chat.example.com", origin: "::::", want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodGet, "/ws", nil)
			r.Host = tc.host
			if got := a.allowedOrigin(r, tc.origin); got != tc.want {
				t.Errorf("allowedOrigin = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code protocol.Code
		want int
	}{
		{protocol.CodeBadRequest, 400},
		{protocol.CodeUnauthorized, 401},
		{protocol.CodeBadCredentials, 401},
		{protocol.CodeNotAMember, 403},
		{protocol.CodeChatNotFound, 404},
		{protocol.CodeUsernameTaken, 409},
		{protocol.CodeNameTaken, 409},
		{protocol.CodeNotCreator, 403},
		{protocol.CodeCSRF, 403},
		{protocol.CodeUnknownUser, 400},
		{protocol.CodeRequestTooLarge, 413},
		{protocol.CodeRateLimited, 429},
		{protocol.CodeUnavailable, 503},
		{protocol.CodeInternal, 500},
		{"something_new", 500},
	}
	for _, tc := range tests {
		if got := status(tc.code); got != tc.want {
			t.Errorf("status(%s) = %d, want %d", tc.code, got, tc.want)
		}
	}
}

func TestSessionToken(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.AddCookie(&http.Cookie{Name: SessionCookie, Value: "from-cookie"})
	if got, cookie := sessionToken(r); got != "from-cookie" || !cookie {
		t.Errorf("cookie token = %q (from cookie %v)", got, cookie)
	}
	r.Header.Set("Authorization", "Bearer from-header")
	if got, cookie := sessionToken(r); got != "from-header" || cookie {
		t.Errorf("header token = %q (from cookie %v), want the header to win", got, cookie)
	}
	if got, _ := sessionToken(httptest.NewRequest(http.MethodGet, "/?token=x", nil)); got != "" {
		t.Errorf("token read from the URL: %q", got)
	}
}

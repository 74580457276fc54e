package e2e

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// TestHTTPErrors: bad requests get the documented status and a JSON error
// with a stable code.
func TestHTTPErrors(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	gw := s.gateways[1]
	tests := []struct {
		name   string
		method string
		path   string
		token  string
		body   any
		status int
		code   string
	}{
		{"username taken, other case", http.MethodPost, "/api/v1/auth/register", "", map[string]string{"username": "ALICE", "password": "another password"}, 409, "username_taken"},
		{"username too short", http.MethodPost, "/api/v1/auth/register", "", map[string]string{"username": "al", "password": "another password"}, 400, "invalid_input"},
		{"wrong password", http.MethodPost, "/api/v1/auth/login", "", map[string]string{"username": "alice", "password": "wrong password"}, 401, "bad_credentials"},
		{"unknown user", http.MethodPost, "/api/v1/auth/login", "", map[string]string{"username": "nobody", "password": "wrong password"}, 401, "bad_credentials"},
		{"no session", http.MethodGet, "/api/v1/me", "", nil, 401, "unauthorized"},
		{"bad limit", http.MethodGet, "/api/v1/chats/1/messages?limit=1000", alice.token, nil, 400, "invalid_input"},
		{"before and after", http.MethodGet, "/api/v1/chats/1/messages?before=5&after=2", alice.token, nil, 400, "invalid_input"},
		{"no such route", http.MethodGet, "/api/v1/nothing", "", nil, 404, "not_found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := do(context.Background(), tc.method, gw+tc.path, tc.token, tc.body, nil)
			var ae *apiError
			if !errors.As(err, &ae) {
				t.Fatalf("error = %v, want an API error", err)
			}
			if ae.Status != tc.status || ae.Code != tc.code {
				t.Errorf("got %d %s, want %d %s", ae.Status, ae.Code, tc.status, tc.code)
			}
		})
	}

	t.Run("body over the limit", func(t *testing.T) {
		body := `{"username":"bob","password":"` + strings.Repeat("x", 100<<10) + `"}`
		resp, err := http.Post(gw+"/api/v1/auth/register", "application/json", bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("status %d, want 413", resp.StatusCode)
		}
	})

	t.Run("logout ends the session", func(t *testing.T) {
		if err := do(context.Background(), http.MethodPost, gw+"/api/v1/auth/logout", alice.token, nil, nil); err != nil {
			t.Fatal(err)
		}
		err := do(context.Background(), http.MethodGet, s.gateways[0]+"/api/v1/me", alice.token, nil, nil)
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status != 401 {
			t.Errorf("after logout: %v, want 401", err)
		}
	})
}

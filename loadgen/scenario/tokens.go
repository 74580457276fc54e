package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
)

// tokenCache keeps the bearer tokens of the load generator's users in a
// file between runs against the same stack, so a run does not log 5,000
// users in again (each login hashes a password). Sessions last as long as
// auth keeps them (30 days by default); delete the file when the stack's
// data was reset.
type tokenCache struct {
	path string
	mu   sync.Mutex
	m    map[string]string // username -> token
}

// loadTokens reads the cache at path ("": no cache); a missing file is an
// empty cache.
func loadTokens(path string) (*tokenCache, error) {
	c := &tokenCache{path: path, m: map[string]string{}}
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	if err := json.Unmarshal(b, &c.m); err != nil {
		return nil, fmt.Errorf("token file %s: %w", path, err)
	}
	return c, nil
}

func (c *tokenCache) get(username string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.m[username]
	return t, ok
}

func (c *tokenCache) put(username, token string) {
	c.mu.Lock()
	c.m[username] = token
	c.mu.Unlock()
}

// save writes the cache back to its file.
func (c *tokenCache) save() error {
	if c.path == "" {
		return nil
	}
	c.mu.Lock()
	b, err := json.Marshal(c.m)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.path, b, 0o600); err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	return nil
}

// cachedUser returns username's token from the cache, or registers (if
// needed) and logs the user in and caches the token.
func (a *api) cachedUser(ctx context.Context, c *tokenCache, i int, username, password string) (string, error) {
	if t, ok := c.get(username); ok {
		return t, nil
	}
	t, err := a.user(ctx, i, username, password)
	if err != nil {
		return "", err
	}
	c.put(username, t)
	return t, nil
}

// staleHint is added to a dial error when tokens came from a file.
func staleHint(path string) string {
	if path == "" {
		return ""
	}
	return " (if the stack's data was reset, delete the token file " + path + ")"
}

// setupUsers registers (if needed) and logs in the users prefix000000 to
// prefix(n-1), using and filling the token file, and returns their names
// and tokens.
func (a *api) setupUsers(ctx context.Context, tokenFile, prefix, password string, n, setup int) (usernames, tokens []string, err error) {
	cache, err := loadTokens(tokenFile)
	if err != nil {
		return nil, nil, err
	}
	usernames, tokens = make([]string, n), make([]string, n)
	err = parallel(ctx, n, setup, func(ctx context.Context, i int) error {
		usernames[i] = fmt.Sprintf("%s%06d", prefix, i)
		t, err := a.cachedUser(ctx, cache, i, usernames[i], password)
		tokens[i] = t
		return err
	})
	if err := errors.Join(err, cache.save()); err != nil {
		return nil, nil, fmt.Errorf("users: %w", err)
	}
	return usernames, tokens, nil
}

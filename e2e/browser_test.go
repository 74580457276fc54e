package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBrowser runs the web app's browser tests (web/tests, playwright-core
// driving Debian's Chromium) against the whole system with two gateway
// replicas. Screenshots land in e2e/artifacts.
func TestBrowser(t *testing.T) {
	s := startStack(t)
	web, err := filepath.Abs(filepath.Join("..", "web"))
	if err != nil {
		t.Fatal(err)
	}
	for _, need := range []string{filepath.Join(web, "node_modules"), filepath.Join(web, "dist", "index.html")} {
		if _, err := os.Stat(need); err != nil {
			t.Fatalf("%s is missing: build the web app first (scripts/test does): %v", need, err)
		}
	}
	artifacts, err := filepath.Abs("artifacts")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "run", "--silent", "test:browser")
	cmd.Dir = web
	cmd.Env = append(os.Environ(),
		"GATEWAY_URLS="+strings.Join(s.gateways, ","),
		"ARTIFACTS_DIR="+artifacts,
	)
	out, err := cmd.CombinedOutput()
	t.Logf("browser tests:\n%s", out)
	if err != nil {
		t.Fatalf("browser tests failed: %v", err)
	}
}

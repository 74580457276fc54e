package deploytest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// repoRoot is the repository's root: go test runs in the package directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		t.Fatalf("repository root %s: %v", root, err)
	}
	return root
}

// readFile reads a file of the repository.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// imageName strips the tag (and digest) from an image reference.
func imageName(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// goRuntimeEnv are the variables the Go runtime of every service reads
// (the gateway is run with GOGC and GODEBUG set, see its README), and
// AUTOMEMLIMIT, which the history service reads to set GOMEMLIMIT from its
// container's limit (services/history/README.md, "Runtime settings").
var goRuntimeEnv = map[string]bool{"GOGC": true, "GOMEMLIMIT": true, "GODEBUG": true, "GOMAXPROCS": true, "GOTRACEBACK": true, "AUTOMEMLIMIT": true}

// serviceEnv checks that every variable in env is one svc reads (or the Go
// runtime does) and that the configuration they make loads and validates;
// it returns the result.
func serviceEnv(t *testing.T, where string, svc Service, env map[string]string) (Settings, bool) {
	t.Helper()
	if len(svc.Env) == 0 {
		t.Fatalf("%s: config.Names found no variables", svc.Name)
	}
	ok := true
	for name := range env {
		if !svc.Reads(name) && !goRuntimeEnv[name] {
			t.Errorf("%s: %s sets %s, which the %s service does not read (it reads %s)",
				where, svc.Name, name, svc.Name, strings.Join(svc.Env, ", "))
			ok = false
		}
	}
	st, err := svc.Load(env)
	if err != nil {
		t.Errorf("%s: %s's configuration does not load: %v", where, svc.Name, err)
		return st, false
	}
	return st, ok
}

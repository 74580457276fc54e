package deploytest

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// dockerfile is a parsed Dockerfile.
type dockerfile struct {
	Path   string
	Stages []instructions.Stage
}

// parseDockerfile parses a service's Dockerfile as BuildKit does; a lint
// warning fails the test.
func parseDockerfile(t *testing.T, svc Service) dockerfile {
	t.Helper()
	p := filepath.Join(repoRoot(t), svc.Dockerfile())
	res, err := parser.Parse(bytes.NewReader(readFile(t, p)))
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	for _, w := range res.Warnings {
		t.Errorf("%s: %s", p, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		t.Errorf("%s:%v: %s: %s", p, loc, rule, msg)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if len(stages) == 0 {
		t.Fatalf("%s: no stage", p)
	}
	return dockerfile{Path: p, Stages: stages}
}

func (d dockerfile) final() instructions.Stage { return d.Stages[len(d.Stages)-1] }

// goStage returns the stage that builds the Go binary: the one named
// "build" (the gateway has a stage before it that builds the web app).
func (d dockerfile) goStage() instructions.Stage {
	for _, st := range d.Stages {
		if st.Name == "build" {
			return st
		}
	}
	return d.Stages[0]
}

// stageCommands returns the commands of type C in st.
func stageCommands[C instructions.Command](st instructions.Stage) []C {
	var out []C
	for _, c := range st.Commands {
		if c, ok := c.(C); ok {
			out = append(out, c)
		}
	}
	return out
}

// stageEnv returns the variables ENV sets in st.
func stageEnv(st instructions.Stage) map[string]string {
	env := map[string]string{}
	for _, c := range stageCommands[*instructions.EnvCommand](st) {
		for _, kv := range c.Env {
			env[kv.Key] = kv.Value
		}
	}
	return env
}

// imageUID returns the numeric user the image runs as.
func imageUID(d dockerfile) (int64, error) {
	users := stageCommands[*instructions.UserCommand](d.final())
	if len(users) == 0 {
		return 0, fmt.Errorf("no USER in the final stage")
	}
	u, _, _ := strings.Cut(users[len(users)-1].User, ":")
	uid, err := strconv.ParseInt(u, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("USER %q is not numeric: Kubernetes' runAsNonRoot cannot check a name", u)
	}
	if uid == 0 {
		return 0, fmt.Errorf("USER is root")
	}
	return uid, nil
}

// dockerignore returns the matcher for the repository's .dockerignore.
func dockerignore(t *testing.T) *patternmatcher.PatternMatcher {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

var goDirective = regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`)

// goMinor returns the minor version of a go.mod's go directive or of a
// golang image tag (golang:1.26-bookworm).
func goMinor(s string) (int, bool) {
	m := goDirective.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[2])
	return n, err == nil && m[1] == "1"
}

func TestDockerfiles(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	for _, svc := range Services {
		t.Run(svc.Name, func(t *testing.T) {
			t.Parallel()
			// A matcher of its own: patternmatcher compiles its patterns
			// lazily, unguarded, so parallel subtests must not share one.
			ignore := dockerignore(t)
			d := parseDockerfile(t, svc)
			if len(d.Stages) < 2 {
				t.Fatalf("%s: %d stage, want a build stage and a runtime stage", d.Path, len(d.Stages))
			}
			build, final := d.goStage(), d.final()

			// The build stage: a Go toolchain at least as new as go.mod asks,
			// a static binary, no go.work (only libs/ and the service are copied).
			tag, ok := strings.CutPrefix(build.BaseName, "golang:")
			if !ok {
				t.Errorf("%s: build stage FROM %s, want golang", d.Path, build.BaseName)
			}
			imageMinor, ok := goMinor("go " + tag)
			if !ok {
				t.Errorf("%s: build stage FROM %s has no Go version", d.Path, build.BaseName)
			}
			for _, mod := range []string{"libs/go.mod", "services/" + svc.Name + "/go.mod"} {
				if m, ok := goMinor(string(readFile(t, filepath.Join(root, mod)))); !ok || m > imageMinor {
					t.Errorf("%s: %s needs a newer Go than %s", d.Path, mod, build.BaseName)
				}
			}
			env := stageEnv(build)
			if env["CGO_ENABLED"] != "0" || env["GOWORK"] != "off" {
				t.Errorf("%s: build stage ENV %v, want CGO_ENABLED=0 and GOWORK=off", d.Path, env)
			}
			runs := stageCommands[*instructions.RunCommand](build)
			if !slices.ContainsFunc(runs, func(r *instructions.RunCommand) bool {
				cmd := strings.Join(r.CmdLine, " ")
				// The mounts are parsed on expansion; nothing here needs expanding.
				if err := r.Expand(func(s string) (string, error) { return s, nil }); err != nil {
					t.Errorf("%s: %v", d.Path, err)
				}
				cache := slices.ContainsFunc(instructions.GetMounts(r), func(m *instructions.Mount) bool {
					return m.Type == instructions.MountTypeCache && m.Target == "/go/pkg/mod"
				})
				return cache && strings.Contains(cmd, "go build") && strings.Contains(cmd, "-trimpath") &&
					strings.Contains(cmd, "-o /out/"+svc.Name)
			}) {
				t.Errorf("%s: no RUN go build -trimpath -o /out/%s with a module cache mount", d.Path, svc.Name)
			}
			for _, c := range stageCommands[*instructions.CopyCommand](build) {
				for _, src := range c.SourcePaths {
					rel := path.Clean(src)
					matches, err := filepath.Glob(filepath.Join(root, filepath.FromSlash(rel)))
					if err != nil || len(matches) == 0 {
						t.Errorf("%s: COPY %s: no such file in the repository", d.Path, src)
					}
					if excluded, _ := ignore.MatchesOrParentMatches(rel); excluded {
						t.Errorf("%s: COPY %s: excluded by .dockerignore", d.Path, src)
					}
				}
			}

			// The runtime stage: distroless, non-root, the binary built above.
			if !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") {
				t.Errorf("%s: final stage FROM %s, want gcr.io/distroless/static", d.Path, final.BaseName)
			}
			if _, err := imageUID(d); err != nil {
				t.Errorf("%s: %v", d.Path, err)
			}
			var binary string
			for _, c := range stageCommands[*instructions.CopyCommand](final) {
				if c.From == "" {
					t.Errorf("%s: the final stage copies %v from the context, want only the binary", d.Path, c.SourcePaths)
				}
				if slices.Contains(c.SourcePaths, "/out/"+svc.Name) {
					binary = c.DestPath
				}
			}
			eps := stageCommands[*instructions.EntrypointCommand](final)
			if binary == "" || len(eps) == 0 || eps[len(eps)-1].PrependShell || eps[len(eps)-1].CmdLine[0] != binary {
				t.Errorf("%s: ENTRYPOINT is not the exec form of the copied binary %q", d.Path, binary)
			}

			// ENV and EXPOSE agree with the service's configuration.
			st, ok := serviceEnv(t, d.Path, svc, stageEnv(final))
			if !ok {
				return
			}
			want, err := st.ListenPorts()
			if err != nil {
				t.Fatal(err)
			}
			var exposed []int
			for _, c := range stageCommands[*instructions.ExposeCommand](final) {
				for _, p := range c.Ports {
					n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
					if err != nil {
						t.Errorf("%s: EXPOSE %s: %v", d.Path, p, err)
					}
					exposed = append(exposed, n)
				}
			}
			slices.Sort(exposed)
			if !slices.Equal(exposed, want) {
				t.Errorf("%s: EXPOSE %v, the service listens on %v", d.Path, exposed, want)
			}
			for _, addr := range []string{st.DebugAddr, st.HTTPAddr} {
				if addr != "" && !strings.HasPrefix(addr, "0.0.0.0:") && !strings.HasPrefix(addr, ":") {
					t.Errorf("%s: the image listens on %s, unreachable from outside the container", d.Path, addr)
				}
			}
		})
	}
}

// TestDockerBuildContext builds each service from what its Dockerfile's
// build stage copies out of the context (after .dockerignore), with the
// stage's environment: what docker build does, without Docker. It catches
// a file the build needs but the context leaves out, and a go.mod that is
// incomplete outside the workspace. Modules missing from the module cache
// are downloaded.
func TestDockerBuildContext(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every service")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	root := repoRoot(t)
	ignore := dockerignore(t)
	for _, svc := range Services {
		t.Run(svc.Name, func(t *testing.T) {
			d := parseDockerfile(t, svc)
			build := d.goStage()
			ctxDir := t.TempDir()
			workdir := "/"
			for _, c := range build.Commands {
				switch c := c.(type) {
				case *instructions.WorkdirCommand:
					if path.IsAbs(c.Path) {
						workdir = path.Clean(c.Path)
					} else {
						workdir = path.Join(workdir, c.Path)
					}
				case *instructions.CopyCommand:
					if c.From != "" {
						continue
					}
					dest, destDir := c.DestPath, strings.HasSuffix(c.DestPath, "/")
					if !path.IsAbs(dest) {
						dest = path.Join(workdir, dest)
					}
					for _, src := range c.SourcePaths {
						copyContext(t, root, path.Clean(src), filepath.Join(ctxDir, filepath.FromSlash(dest)), destDir, ignore)
					}
				}
			}
			cmd := exec.Command(goBin, "build", "-trimpath", "-o", filepath.Join(t.TempDir(), svc.Name), ".")
			cmd.Dir = filepath.Join(ctxDir, filepath.FromSlash(workdir))
			cmd.Env = os.Environ()
			for k, v := range stageEnv(build) {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s: go build in the build stage's context: %v\n%s", d.Path, err, out)
			}
		})
	}
}

// copyContext copies src (relative to root) to dest as COPY does: a
// directory's contents into dest, a file into dest (or dest/ when destDir),
// leaving out what ignore excludes.
func copyContext(t *testing.T, root, src, dest string, destDir bool, ignore *patternmatcher.PatternMatcher) {
	t.Helper()
	base := filepath.Join(root, filepath.FromSlash(src))
	info, err := os.Stat(base)
	if err != nil {
		t.Fatal(err)
	}
	if !info.IsDir() {
		if destDir {
			dest = filepath.Join(dest, filepath.Base(base))
		}
		copyFile(t, base, dest)
		return
	}
	err = filepath.WalkDir(base, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if excluded, _ := ignore.MatchesOrParentMatches(filepath.ToSlash(rel)); excluded {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !e.Type().IsRegular() {
			return nil
		}
		inner, err := filepath.Rel(base, p)
		if err != nil {
			return err
		}
		copyFile(t, p, filepath.Join(dest, inner))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

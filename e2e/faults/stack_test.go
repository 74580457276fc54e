package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/devstack"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
)

// service is one process of the system under test.
type service struct {
	name      string // auth, chat-1, history-2, gateway-1, ...
	program   string // the binary's name in infra.bin
	env       []string
	debugAddr string
	httpAddr  string // gateways only
	logPath   string
	proc      *devstack.Process
}

// stack is one test's system: auth, two chat, two history and two gateway
// replicas as processes on the shared infrastructure, with the test's own
// database, Redis key prefix and NATS subject prefix.
type stack struct {
	t        *testing.T
	in       *infra
	dbURL    string
	subjects subjects.Subjects
	services map[string]*service
	order    []string
}

// stackOptions adjusts a test's stack.
type stackOptions struct {
	// env holds extra variables (with their service prefix).
	env map[string]string
}

func startStack(t *testing.T, opts stackOptions) *stack {
	t.Helper()
	in := needInfra(t)
	s := &stack{t: t, in: in, services: map[string]*service{}}
	s.dbURL = createDatabase(t, in.pg)
	redisPrefix := testenv.UniqueName("f")
	subjectPrefix := testenv.SubjectPrefix()
	var err error
	if s.subjects, err = subjects.New(subjectPrefix); err != nil {
		t.Fatal(err)
	}
	natsURL, redisURL := in.nats.URL(), in.redis.URL()
	webDir := filepath.Join(in.dir, "web") // nothing there: no web app

	// Every port of the stack differs (a free port is free only until
	// someone binds it).
	allPorts, err := devstack.FreePorts(14)
	if err != nil {
		t.Fatal(err)
	}
	add := func(name, program string, env map[string]string) *service {
		ports := allPorts[:2]
		allPorts = allPorts[2:]
		prefix := strings.ToUpper(program) + "_"
		svc := &service{name: name, program: program, debugAddr: fmt.Sprintf("127.0.0.1:%d", ports[0])}
		env["DEBUG_ADDR"] = svc.debugAddr
		env["NATS_URL"] = natsURL
		env["SUBJECT_PREFIX"] = subjectPrefix
		env["LOG_LEVEL"] = "info"
		if program == "gateway" {
			svc.httpAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
			env["HTTP_ADDR"] = svc.httpAddr
		}
		for k, v := range opts.env {
			if strings.HasPrefix(k, prefix) {
				env[strings.TrimPrefix(k, prefix)] = v
			}
		}
		svc.env = append(svc.env, "PATH="+os.Getenv("PATH"))
		for k, v := range env {
			svc.env = append(svc.env, prefix+k+"="+v)
		}
		svc.logPath = filepath.Join(in.logs, sanitize(t.Name())+"-"+name+".log")
		s.services[name] = svc
		s.order = append(s.order, name)
		return svc
	}
	add("auth", "auth", map[string]string{"POSTGRES_URL": s.dbURL, "POSTGRES_MAX_CONNS": "4", "SHUTDOWN_TIMEOUT": "5s"})
	for i := 1; i <= 2; i++ {
		add(fmt.Sprintf("chat-%d", i), "chat", map[string]string{"POSTGRES_URL": s.dbURL, "POSTGRES_MAX_CONNS": "4", "SHUTDOWN_TIMEOUT": "5s"})
	}
	for i := 1; i <= 2; i++ {
		add(fmt.Sprintf("history-%d", i), "history", map[string]string{
			"POSTGRES_URL": s.dbURL, "POSTGRES_MAX_CONNS": "4", "REDIS_URL": redisURL, "REDIS_PREFIX": redisPrefix,
			"SHUTDOWN_TIMEOUT": "5s", "LEADER_TTL": "1s",
		})
	}
	for i := 1; i <= 2; i++ {
		add(fmt.Sprintf("gateway-%d", i), "gateway", map[string]string{
			"REDIS_URL": redisURL, "REDIS_PREFIX": redisPrefix, "WEB_DIR": webDir,
			"AUTH_RATE_PER_ADDRESS": "100000", "AUTH_RATE_PER_USERNAME": "100000",
			"POSITION_CHECK_INTERVAL": "2s", "SHUTDOWN_TIMEOUT": "6s", "DRAIN_TIMEOUT": "5s",
		})
	}
	t.Cleanup(func() {
		for i := len(s.order) - 1; i >= 0; i-- {
			if svc := s.services[s.order[i]]; svc.proc != nil {
				_ = svc.proc.Stop(10 * time.Second)
			}
		}
		if t.Failed() {
			for _, name := range s.order {
				t.Logf("last lines of %s's log:\n%s", name, tail(s.services[name].logPath, 25))
			}
		}
	})
	// Chat first: it declares the message stream the writers consume.
	for _, name := range s.order {
		s.start(name)
	}
	return s
}

// start starts (or restarts) a service and waits until it is ready.
func (s *stack) start(name string) {
	s.t.Helper()
	svc := s.services[name]
	log, err := os.OpenFile(svc.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	defer log.Close() // the child keeps its own descriptor
	cmd := exec.Command(filepath.Join(s.in.bin, svc.program))
	cmd.Env = svc.env
	if svc.proc, err = devstack.Start(name, cmd, syscall.SIGTERM, log); err != nil {
		s.t.Fatal(err)
	}
	s.waitReady(name)
}

// waitReady polls the service's /readyz until it answers 200.
func (s *stack) waitReady(name string) {
	s.t.Helper()
	svc := s.services[name]
	testenv.EventuallyDescribe(s.t, 60*time.Second, func() bool {
		if !svc.proc.Running() {
			s.t.Fatalf("%s exited: %v\n%s", name, svc.proc.Err(), tail(svc.logPath, 40))
		}
		return httpOK("http://" + svc.debugAddr + "/readyz")
	}, func() string { return fmt.Sprintf("%s ready\n%s", name, tail(svc.logPath, 20)) })
}

// kill kills a service with SIGKILL: no shutdown, nothing flushed.
func (s *stack) kill(name string) {
	s.t.Helper()
	svc := s.services[name]
	svc.proc.Kill()
	s.t.Logf("killed %s (kill -9)", name)
}

// unstored is what the message stream held beyond the history writers'
// stored position at one moment.
type unstored struct {
	// pos is the writers' stored position (the last stream sequence
	// stored), last the stream's last sequence.
	pos, last uint64
	// msgs holds each message between them, in stream order (with read).
	msgs []streamMsg
	// gone counts the sequences between them no longer in the stream.
	gone int
}

// unstoredRange reads the writers' stored position from PostgreSQL and the
// stream's last sequence, and with read the messages between them. With
// read it first waits until the position stays put between two reads (a
// commit a killed writer sent just before it died may still land).
func (s *stack) unstoredRange(read bool) (unstored, error) {
	var u unstored
	nc, err := nats.Connect(s.in.nats.URL())
	if err != nil {
		return u, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return u, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dbURL)
	if err != nil {
		return u, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	position := func() (uint64, error) {
		var pos int64
		err := conn.QueryRow(ctx, `SELECT last_seq FROM writer_positions WHERE stream = $1`, s.subjects.MessagesStream()).Scan(&pos)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, nil
		}
		return uint64(pos), err
	}
	if u.pos, err = position(); err != nil {
		return u, err
	}
	if read {
		prev := u.pos
		poll(2*time.Second, 50*time.Millisecond, func() bool {
			next, perr := position()
			if perr != nil {
				err = perr
				return true
			}
			u.pos = next
			stable := next == prev
			prev = next
			return stable
		})
		if err != nil {
			return u, err
		}
	}
	stream, err := js.Stream(ctx, s.subjects.MessagesStream())
	if err != nil {
		return u, err
	}
	u.last = stream.CachedInfo().State.LastSeq
	if !read {
		return u, nil
	}
	for seq := u.pos + 1; seq <= u.last; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			u.gone++
			continue
		}
		if err != nil {
			return u, fmt.Errorf("stream message %d: %w", seq, err)
		}
		var sm busapi.StreamMessage
		if err := json.Unmarshal(m.Data, &sm); err != nil {
			return u, fmt.Errorf("stream message %d: %w", seq, err)
		}
		u.msgs = append(u.msgs, streamMsg{seq: seq, key: sendKey(sm.ChatID, sm.SenderID, sm.ClientMsgID)})
	}
	return u, nil
}

// streamMsg is a message in the stream: its stream sequence and its key
// (chat, sender, client message id).
type streamMsg struct {
	seq uint64
	key string
}

// gateways returns the base URLs of the gateway replicas.
func (s *stack) gateways() []string {
	var out []string
	for _, name := range s.order {
		if svc := s.services[name]; svc.httpAddr != "" {
			out = append(out, "http://"+svc.httpAddr)
		}
	}
	return out
}

// metric returns the value of a counter on a service's /metrics (0 when
// absent or unreachable).
func (s *stack) metric(name, metric string) float64 {
	resp, err := http.Get("http://" + s.services[name].debugAddr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(metric) + `(\{[^}]*\})? ([0-9.e+-]+)$`)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			v, _ := strconv.ParseFloat(m[2], 64)
			return v
		}
	}
	return 0
}

func httpOK(u string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// createDatabase creates an empty database for the test on pg and drops
// it at the end.
func createDatabase(t *testing.T, pg *devstack.Postgres) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := testenv.UniqueName("f_")
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pg.URL("postgres"))
		if err != nil {
			t.Logf("drop database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	u, _ := url.Parse(pg.URL(name))
	return u.String()
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' {
			return '_'
		}
		return r
	}, s)
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

package config

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type testConfig struct {
	URL     string        `env:"URL" envDefault:"postgres://u:hunter2@localhost/db"`
	Token   string        `env:"TOKEN" secret:"true"`
	Timeout time.Duration `env:"TIMEOUT" envDefault:"2s"`
	Workers int           `env:"WORKERS" envDefault:"4"`
}

func (c *testConfig) Validate() error {
	if c.Workers < 1 {
		return errors.New("WORKERS must be at least 1")
	}
	return nil
}

func TestLoad(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		want    testConfig
		wantErr string
	}{
		{
			name: "defaults",
			env:  map[string]string{},
			want: testConfig{URL: "postgres://u:hunter2@localhost/db", Timeout: 2 * time.Second, Workers: 4},
		},
		{
			name: "prefixed overrides",
			env:  map[string]string{"SVC_WORKERS": "9", "SVC_TIMEOUT": "1m", "WORKERS": "1"},
			want: testConfig{URL: "postgres://u:hunter2@localhost/db", Timeout: time.Minute, Workers: 9},
		},
		{name: "invalid", env: map[string]string{"SVC_WORKERS": "0"}, wantErr: "WORKERS must be at least 1"},
		{name: "unparsable", env: map[string]string{"SVC_TIMEOUT": "soon"}, wantErr: "SVC_TIMEOUT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := LoadFrom[testConfig]("SVC_", tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLogValueMasksSecrets(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	cfg := testConfig{URL: "postgres://u:hunter2@localhost/db", Token: "s3cret", Workers: 1}
	logger.Info("config", "config", LogValue(cfg))
	out := buf.String()
	for _, secret := range []string{"hunter2", "s3cret"} {
		if strings.Contains(out, secret) {
			t.Errorf("log line contains secret %q: %s", secret, out)
		}
	}
	if !strings.Contains(out, `"TIMEOUT":"0s"`) {
		t.Errorf("log line does not show the duration readably: %s", out)
	}
	if !strings.Contains(out, `"TOKEN":"***"`) {
		t.Errorf("log line does not show masked TOKEN: %s", out)
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	got := Names[testConfig]("SVC_")
	want := []string{"SVC_URL", "SVC_TOKEN", "SVC_TIMEOUT", "SVC_WORKERS"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"postgres://u:hunter2@db:5432/x?sslmode=disable", "postgres://u:xxxxx@db:5432/x?sslmode=disable"},
		{"nats://s3cret@nats:4222", "nats://xxxxx@nats:4222"},
		{"nats://u:p1@a:4222,nats://u:p2@b:4222", "nats://u:xxxxx@a:4222,nats://u:xxxxx@b:4222"},
		{"host=db user=u password=hunter2 dbname=x", "host=db user=u password=*** dbname=x"},
		{"host=db password='hunter 2'", "host=db password=***"},
		{"redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"},
		{"127.0.0.1:9090", "127.0.0.1:9090"},
		{"info", "info"},
	}
	for _, tc := range tests {
		got := Redact(tc.in)
		if got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
		for _, secret := range []string{"hunter", "s3cret", "p1@", "p2@"} {
			if strings.Contains(got, secret) {
				t.Errorf("Redact(%q) = %q still holds %q", tc.in, got, secret)
			}
		}
	}
}

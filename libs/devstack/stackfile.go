package devstack

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// StackFile describes a running local stack to programs that drive it (the
// load generator): `devstack run` writes it as stack.json in its state
// folder once every service is ready, and removes it on exit.
type StackFile struct {
	// Gateways are the base URLs of the gateway replicas, in order
	// (http://127.0.0.1:PORT; the websocket is at /ws).
	Gateways []string `json:"gateways"`
	// Debug maps each of our processes (auth, chat, history, gateway-1,
	// gateway-2) to the base URL of its debug server (/metrics,
	// /debug/pprof/).
	Debug map[string]string `json:"debug"`
	// Pids maps every process of the stack (our services and postgres,
	// redis, nats-server) to its process id.
	Pids     map[string]int `json:"pids"`
	Postgres string         `json:"postgres"`
	Redis    string         `json:"redis"`
	NATS     string         `json:"nats"`
}

// WriteStackFile writes s to path atomically (a reader never sees half a
// file).
func WriteStackFile(path string, s StackFile) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("write stack file: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".stack-*.json")
	if err != nil {
		return fmt.Errorf("write stack file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write stack file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write stack file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write stack file: %w", err)
	}
	return nil
}

// ReadStackFile reads a stack file written by WriteStackFile.
func ReadStackFile(path string) (StackFile, error) {
	var s StackFile
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("read stack file: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("read stack file %s: %w", path, err)
	}
	if len(s.Gateways) == 0 {
		return s, fmt.Errorf("read stack file %s: no gateways", path)
	}
	return s, nil
}

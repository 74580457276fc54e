// Package deploytest checks the deployment files (docker-compose.yml and the
// files under deploy/, the services' Dockerfiles and .dockerignore) against
// the services' code, offline: no Docker engine or cluster is needed.
//
// This file lists the services and how to read their configuration; the
// checks are the package's tests.
package deploytest

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/communications/communications/libs/config"
	"github.com/communications/communications/services/auth/authsvc"
	"github.com/communications/communications/services/chat/chatsvc"
	"github.com/communications/communications/services/gateway/gatewaysvc"
	"github.com/communications/communications/services/history/historysvc"
)

// Service is one of our services as the deployment files see it.
type Service struct {
	// Name is the service's directory under services/ and its image name
	// (communications/<Name>).
	Name string
	// EnvPrefix prefixes every variable the service reads.
	EnvPrefix string
	// Env lists the variables the service reads, with the prefix.
	Env []string
	// Load reads the service's configuration from env alone (defaults for
	// the rest) and validates it, as the service does at start-up.
	Load func(env map[string]string) (Settings, error)
}

// Settings are the parts of a service's configuration that the deployment
// files must agree with.
type Settings struct {
	DebugAddr string
	// HTTPAddr is empty for services without an HTTP listener.
	HTTPAddr        string
	ShutdownTimeout time.Duration
}

// Reads reports whether the service reads the variable name.
func (s Service) Reads(name string) bool { return slices.Contains(s.Env, name) }

// Dockerfile is the service's Dockerfile, relative to the repository root.
func (s Service) Dockerfile() string { return "services/" + s.Name + "/Dockerfile" }

// Image is the service's image name, without a tag.
func (s Service) Image() string { return "communications/" + s.Name }

// ListenPorts returns the ports of the addresses in st.
func (st Settings) ListenPorts() ([]int, error) {
	var ports []int
	for _, addr := range []string{st.HTTPAddr, st.DebugAddr} {
		if addr == "" {
			continue
		}
		p, err := Port(addr)
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return ports, nil
}

// Port returns the port of a host:port address.
func Port(addr string) (int, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return 0, fmt.Errorf("address %q: bad port", addr)
	}
	return p, nil
}

// Services are our four services.
var Services = []Service{
	service("auth", authsvc.EnvPrefix, func(c *authsvc.Config) Settings {
		return Settings{DebugAddr: c.DebugAddr, ShutdownTimeout: c.ShutdownTimeout}
	}),
	service("chat", chatsvc.EnvPrefix, func(c *chatsvc.Config) Settings {
		return Settings{DebugAddr: c.DebugAddr, ShutdownTimeout: c.ShutdownTimeout}
	}),
	service("history", historysvc.EnvPrefix, func(c *historysvc.Config) Settings {
		return Settings{DebugAddr: c.DebugAddr, ShutdownTimeout: c.ShutdownTimeout}
	}),
	service("gateway", gatewaysvc.EnvPrefix, func(c *gatewaysvc.Config) Settings {
		return Settings{DebugAddr: c.DebugAddr, HTTPAddr: c.HTTPAddr, ShutdownTimeout: c.ShutdownTimeout}
	}),
}

func service[T any](name, prefix string, settings func(*T) Settings) Service {
	return Service{
		Name:      name,
		EnvPrefix: prefix,
		Env:       config.Names[T](prefix),
		Load: func(env map[string]string) (Settings, error) {
			if env == nil {
				env = map[string]string{}
			}
			cfg, err := config.LoadFrom[T](prefix, env)
			if err != nil {
				return Settings{}, err
			}
			return settings(&cfg), nil
		},
	}
}

// ServiceByName returns the service called name.
func ServiceByName(name string) (Service, bool) {
	i := slices.IndexFunc(Services, func(s Service) bool { return s.Name == name })
	if i < 0 {
		return Service{}, false
	}
	return Services[i], true
}

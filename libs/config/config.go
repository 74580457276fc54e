// Package config loads a service's Config struct from environment variables
// with the service's prefix, validates it and renders it for the log with
// secrets masked. It is the only place that reads the environment.
//
// Fields use caarlos0/env tags: `env:"NATS_URL" envDefault:"nats://127.0.0.1:4222"`.
// A field tagged `secret:"true"` is masked when logged, and a URL with a
// password or token has its credentials masked (see Redact).
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
)

// Validator is implemented by configs that check themselves.
type Validator interface {
	Validate() error
}

// Load fills a T from the environment variables named prefix+tag, then
// validates it if T implements Validator.
func Load[T any](prefix string) (T, error) {
	return LoadFrom[T](prefix, nil)
}

// LoadFrom is Load with an explicit environment (nil: the process's).
func LoadFrom[T any](prefix string, environ map[string]string) (T, error) {
	var cfg T
	opts := env.Options{Prefix: prefix}
	if environ != nil {
		opts.Environment = environ
	}
	if err := env.ParseWithOptions(&cfg, opts); err != nil {
		return cfg, fmt.Errorf("config: %w", nameVariables[T](prefix, err))
	}
	if v, ok := any(&cfg).(Validator); ok {
		if err := v.Validate(); err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
	}
	return cfg, nil
}

// Names returns the environment variable names a T reads with prefix, for
// checking deployment files against the code.
func Names[T any](prefix string) []string {
	var cfg T
	params, err := env.GetFieldParamsWithOptions(&cfg, env.Options{Prefix: prefix})
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(params))
	for _, p := range params {
		names = append(names, p.Key)
	}
	return names
}

// LogValue renders cfg for a log line, masking secrets.
func LogValue(cfg any) slog.Value {
	v := reflect.ValueOf(cfg)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return slog.AnyValue(cfg)
	}
	t := v.Type()
	attrs := make([]slog.Attr, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		fv := v.Field(i)
		name := f.Tag.Get("env")
		if name == "" {
			name = f.Name
		}
		switch {
		case f.Tag.Get("secret") == "true":
			attrs = append(attrs, slog.String(name, mask(fv)))
		case fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeFor[time.Time]():
			attrs = append(attrs, slog.Attr{Key: name, Value: LogValue(fv.Interface())})
		case fv.Type() == reflect.TypeFor[time.Duration]():
			attrs = append(attrs, slog.String(name, time.Duration(fv.Int()).String()))
		case fv.Kind() == reflect.String:
			attrs = append(attrs, slog.String(name, Redact(fv.String())))
		default:
			attrs = append(attrs, slog.Any(name, fv.Interface()))
		}
	}
	return slog.GroupValue(attrs...)
}

func mask(v reflect.Value) string {
	if v.IsZero() {
		return ""
	}
	return "***"
}

// Redact masks credentials in a connection string: the user information
// of every URL in a comma-separated list (a password, or a token given as
// the user, as NATS allows) and the password of a keyword/value DSN
// ("host=db password=..."). Other strings are returned unchanged.
func Redact(s string) string {
	if dsnPassword.MatchString(s) {
		return dsnPassword.ReplaceAllString(s, "${1}***")
	}
	parts := strings.Split(s, ",")
	for i, part := range parts {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil || u.User == nil || u.Scheme == "" {
			continue
		}
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else {
			u.User = url.User("xxxxx")
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

var dsnPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('[^']*'|\S+)`)

// nameVariables rewrites the parse errors of caarlos0/env, which name the
// struct field, to name the environment variable the operator set.
func nameVariables[T any](prefix string, err error) error {
	agg, ok := errors.AsType[env.AggregateError](err)
	if !ok {
		return err
	}
	t := reflect.TypeFor[T]()
	out := make([]error, 0, len(agg.Errors))
	for _, e := range agg.Errors {
		if pe, ok := errors.AsType[env.ParseError](e); ok {
			if f, ok := t.FieldByName(pe.Name); ok && f.Tag.Get("env") != "" {
				out = append(out, fmt.Errorf("%s%s: %w", prefix, f.Tag.Get("env"), pe.Err))
				continue
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

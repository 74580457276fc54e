package deploytest

import (
	"fmt"
	"strings"
	"unicode"
)

// directive is one nginx directive, with its block if it has one.
type directive struct {
	Name  string
	Args  []string
	Block []directive
}

// parseNginx parses an nginx configuration into its directives: enough of
// the syntax for our proxy's file (no variables are expanded, no includes).
func parseNginx(src string) ([]directive, error) {
	toks, err := nginxTokens(src)
	if err != nil {
		return nil, err
	}
	ds, rest, err := nginxBlock(toks, false)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("nginx: unexpected %q", rest[0])
	}
	return ds, nil
}

func nginxBlock(toks []string, inner bool) ([]directive, []string, error) {
	var ds []directive
	for len(toks) > 0 {
		if toks[0] == "}" {
			if !inner {
				return nil, nil, fmt.Errorf("nginx: unbalanced }")
			}
			return ds, toks[1:], nil
		}
		d := directive{Name: toks[0]}
		toks = toks[1:]
		for {
			if len(toks) == 0 {
				return nil, nil, fmt.Errorf("nginx: %s: missing ; or {", d.Name)
			}
			t := toks[0]
			toks = toks[1:]
			if t == ";" {
				break
			}
			if t == "{" {
				var err error
				d.Block, toks, err = nginxBlock(toks, true)
				if err != nil {
					return nil, nil, err
				}
				break
			}
			if t == "}" {
				return nil, nil, fmt.Errorf("nginx: %s: unexpected }", d.Name)
			}
			d.Args = append(d.Args, t)
		}
		ds = append(ds, d)
	}
	if inner {
		return nil, nil, fmt.Errorf("nginx: missing }")
	}
	return ds, nil, nil
}

func nginxTokens(src string) ([]string, error) {
	var toks []string
	rs := []rune(src)
	for i := 0; i < len(rs); {
		r := rs[i]
		switch {
		case unicode.IsSpace(r):
			i++
		case r == '#':
			for i < len(rs) && rs[i] != '\n' {
				i++
			}
		case r == '{' || r == '}' || r == ';':
			toks = append(toks, string(r))
			i++
		case r == '"' || r == '\'':
			j := i + 1
			for j < len(rs) && rs[j] != r {
				j++
			}
			if j == len(rs) {
				return nil, fmt.Errorf("nginx: unterminated string")
			}
			toks = append(toks, string(rs[i+1:j]))
			i = j + 1
		default:
			j := i
			for j < len(rs) && !unicode.IsSpace(rs[j]) && !strings.ContainsRune("{};", rs[j]) {
				j++
			}
			toks = append(toks, string(rs[i:j]))
			i = j
		}
	}
	return toks, nil
}

// find returns the directives called name among ds, recursively.
func find(ds []directive, name string) []directive {
	var out []directive
	for _, d := range ds {
		if d.Name == name {
			out = append(out, d)
		}
		out = append(out, find(d.Block, name)...)
	}
	return out
}

// arg1 returns the first argument of the directive name directly in ds.
func arg1(ds []directive, name string) (string, bool) {
	for _, d := range ds {
		if d.Name == name && len(d.Args) > 0 {
			return d.Args[0], true
		}
	}
	return "", false
}

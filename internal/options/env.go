package options

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"kiln.dev/kiln/internal/errdefs"
)

// DefaultPath is the PATH a program gets unless its env sets one, as in
// docker.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ParseEnv resolves -e values: KEY=VALUE as is, a bare KEY takes the host's
// value (and is dropped when the host has none), as docker does.
func ParseEnv(entries []string, lookup func(string) (string, bool)) ([]string, error) {
	var out []string
	for _, e := range entries {
		k, _, hasValue := strings.Cut(e, "=")
		if k == "" || strings.ContainsAny(k, " \t\x00") {
			return nil, errdefs.Invalid(fmt.Sprintf("invalid environment variable %q: want KEY=VALUE or KEY", e))
		}
		if hasValue {
			out = append(out, e)
			continue
		}
		if v, ok := lookup(k); ok {
			out = append(out, k+"="+v)
		}
	}
	return out, nil
}

// ParseEnvFile reads a docker --env-file: one KEY=VALUE or KEY per line,
// blank lines and lines starting with # ignored.
func ParseEnvFile(r io.Reader, name string, lookup func(string) (string, bool)) ([]string, error) {
	var entries []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimLeft(sc.Text(), " \t")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, _ := strings.Cut(line, "=")
		if k == "" || strings.ContainsAny(k, " \t") {
			return nil, errdefs.Invalid(fmt.Sprintf("invalid line %d in env file %s: %q: want KEY=VALUE", n, name, line))
		}
		entries = append(entries, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading env file %s: %w", name, err)
	}
	return ParseEnv(entries, lookup)
}

// MergeEnv returns base with each KEY=VALUE of over applied in order: a
// value replaces the first of base's entries with its key in place (C's
// getenv takes the first of duplicates), a new key is appended. base is
// not changed. The host merges an image's env with the run's, and the
// guest's init an exec's env with the program's, with this one function.
func MergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	index := make(map[string]int, len(out))
	for i, e := range out {
		k, _, _ := strings.Cut(e, "=")
		if _, seen := index[k]; !seen {
			index[k] = i
		}
	}
	for _, e := range over {
		k, _, _ := strings.Cut(e, "=")
		if i, ok := index[k]; ok {
			out[i] = e
			continue
		}
		index[k] = len(out)
		out = append(out, e)
	}
	return out
}

package options

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"kiln.dev/kiln/internal/errdefs"
)

// ParseLabels reads --label values, KEY=VALUE or KEY (an empty value), into
// labels; a later one of the same key wins, as docker's.
func ParseLabels(labels map[string]string, values []string) (map[string]string, error) {
	for _, l := range values {
		k, v, _ := strings.Cut(l, "=")
		if strings.TrimSpace(k) == "" || strings.ContainsAny(k, " \t\n") {
			return nil, errdefs.Invalid(fmt.Sprintf("invalid label %q: want KEY=VALUE with a key of no spaces, like tier=front", l))
		}
		if labels == nil {
			labels = map[string]string{}
		}
		labels[k] = v
	}
	return labels, nil
}

// ParseLabelFile reads a --label-file: a KEY=VALUE per line, blank lines
// and lines starting with # skipped; name is the file's, for errors.
func ParseLabelFile(labels map[string]string, r io.Reader, name string) (map[string]string, error) {
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var err error
		if labels, err = ParseLabels(labels, []string{line}); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", name, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading label file %s: %w", name, err)
	}
	return labels, nil
}

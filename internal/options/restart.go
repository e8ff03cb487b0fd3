package options

import (
	"fmt"
	"strconv"
	"strings"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

// Restart policy names, as docker's.
const (
	RestartNo            = "no"
	RestartOnFailure     = "on-failure"
	RestartAlways        = "always"
	RestartUnlessStopped = "unless-stopped"
)

// RestartPolicy says when the supervisor starts a VM again after it ends.
type RestartPolicy struct {
	Name string `json:"name"`
	// MaxRetries bounds on-failure restarts; 0 means no bound.
	MaxRetries int `json:"maxRetries,omitempty"`
}

// ParseRestartPolicy parses docker's --restart syntax: no, always,
// unless-stopped, on-failure[:max-retries].
func ParseRestartPolicy(s string) (RestartPolicy, error) {
	name, max, hasMax := strings.Cut(s, ":")
	switch name {
	case "", RestartNo, RestartAlways, RestartUnlessStopped:
		if hasMax {
			return RestartPolicy{}, errdefs.Invalid(fmt.Sprintf("invalid restart policy %q: only on-failure takes a maximum retry count", s))
		}
		if name == "" {
			name = RestartNo
		}
		return RestartPolicy{Name: name}, nil
	case RestartOnFailure:
		p := RestartPolicy{Name: name}
		if hasMax {
			n, err := strconv.Atoi(max)
			if err != nil || n < 0 {
				return RestartPolicy{}, errdefs.Invalid(fmt.Sprintf("invalid restart policy %q: the maximum retry count must be a whole number, 0 or more", s))
			}
			p.MaxRetries = n
		}
		return p, nil
	}
	return RestartPolicy{}, errdefs.Invalid(fmt.Sprintf("invalid restart policy %q: use no, always, unless-stopped or on-failure[:max-retries]", s))
}

// Validate reports whether p is a known policy.
func (p RestartPolicy) Validate() error {
	s := p.Name
	if p.MaxRetries != 0 {
		s += ":" + strconv.Itoa(p.MaxRetries)
	}
	_, err := ParseRestartPolicy(s)
	if err == nil && p.MaxRetries < 0 {
		err = errdefs.Invalid(fmt.Sprintf("invalid restart policy: negative retry count %d", p.MaxRetries))
	}
	return err
}

// String formats p as --restart takes it.
func (p RestartPolicy) String() string {
	if p.Name == "" {
		return RestartNo
	}
	if p.Name == RestartOnFailure && p.MaxRetries > 0 {
		return p.Name + ":" + strconv.Itoa(p.MaxRetries)
	}
	return p.Name
}

// ShouldRestart reports whether a VM that ended with exitCode, after
// restarts so far, is started again. An explicit stop is never undone: the
// caller does not ask then.
func (p RestartPolicy) ShouldRestart(exitCode, restarts int) bool {
	switch p.Name {
	case RestartAlways, RestartUnlessStopped:
		return true
	case RestartOnFailure:
		return exitCode != 0 && (p.MaxRetries == 0 || restarts < p.MaxRetries)
	}
	return false
}

// LogConfig bounds a VM's stored logs: the API's type itself. MaxSize is
// the size of one log file before rotation, 0 meaning 10 MiB; MaxFiles is
// how many log files are kept, 0 meaning 3.
type LogConfig = api.LogConfig

// Defaults of LogConfig.
const (
	DefaultLogMaxSize  = 10 << 20
	DefaultLogMaxFiles = 3
)

// ParseLogOpts parses docker's --log-opt values (max-size=10m, max-file=3).
func ParseLogOpts(opts []string) (LogConfig, error) {
	var c LogConfig
	for _, o := range opts {
		k, v, ok := strings.Cut(o, "=")
		switch {
		case !ok:
			return c, errdefs.Invalid(fmt.Sprintf("invalid log option %q: want key=value", o))
		case k == "max-size":
			bytes, err := ParseSize(v)
			if err != nil || bytes < 1024 {
				return c, errdefs.Invalid(fmt.Sprintf("invalid log option %q: max-size wants a size of at least 1k, like 10m", o))
			}
			c.MaxSize = bytes
		case k == "max-file":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return c, errdefs.Invalid(fmt.Sprintf("invalid log option %q: max-file wants a whole number, 1 or more", o))
			}
			c.MaxFiles = n
		default:
			return c, errdefs.Invalid(fmt.Sprintf("invalid log option %q: kiln knows max-size and max-file", o))
		}
	}
	return c, nil
}

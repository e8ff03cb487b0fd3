package options

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/errdefs"
)

// ParseUlimit parses a docker --ulimit value: name=soft[:hard].
func ParseUlimit(s string) (api.Ulimit, error) {
	bad := func(why string) (api.Ulimit, error) {
		return api.Ulimit{}, errdefs.Invalid(fmt.Sprintf("invalid ulimit %q: %s", s, why))
	}
	name, val, ok := strings.Cut(s, "=")
	if !ok {
		return bad("want name=soft[:hard]")
	}
	if _, ok := agent.RlimitResources[name]; !ok {
		return bad("unknown resource " + name)
	}
	softS, hardS, hasHard := strings.Cut(val, ":")
	soft, err := parseLimit(softS)
	if err != nil {
		return bad("soft limit is not a number or unlimited")
	}
	hard := soft
	if hasHard {
		if hard, err = parseLimit(hardS); err != nil {
			return bad("hard limit is not a number or unlimited")
		}
	}
	if soft > hard {
		return bad("soft limit above hard limit")
	}
	return api.Ulimit{Name: name, Soft: soft, Hard: hard}, nil
}

func parseLimit(s string) (uint64, error) {
	if s == "unlimited" || s == "-1" {
		return math.MaxUint64, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// ValidateRlimits checks resource limits however they were given: known
// resources, soft limit not above hard.
func ValidateRlimits(rs []api.Ulimit) error {
	for _, r := range rs {
		if _, ok := agent.RlimitResources[r.Name]; !ok {
			return errdefs.Invalid(fmt.Sprintf("invalid ulimit %q: unknown resource", r.Name))
		}
		if r.Soft > r.Hard {
			return errdefs.Invalid(fmt.Sprintf("invalid ulimit %s=%d:%d: soft limit above hard limit", r.Name, r.Soft, r.Hard))
		}
	}
	return nil
}

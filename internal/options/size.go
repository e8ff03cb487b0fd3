package options

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"kiln.dev/kiln/internal/errdefs"
)

// splitSize splits a docker-style size into its number and the multiplier
// of its unit: b, k, m, g or t (binary multiples, in any case, optionally
// followed by "b" or "ib"; none means bytes).
func splitSize(s string) (num string, mult int64) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "ib")
	t = strings.TrimSuffix(t, "b")
	if t == "" {
		return "", 1
	}
	mult = 1
	switch t[len(t)-1] {
	case 'k':
		mult = 1 << 10
	case 'm':
		mult = 1 << 20
	case 'g':
		mult = 1 << 30
	case 't':
		mult = 1 << 40
	}
	if mult != 1 {
		t = t[:len(t)-1]
	}
	return t, mult
}

// ParseSize parses a size in bytes: a whole number with an optional unit
// b, k, m, g or t (binary: 1k is 1024), like 10m or 1g.
func ParseSize(s string) (int64, error) {
	num, mult := splitSize(s)
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, errdefs.Invalid(fmt.Sprintf("invalid size %q: want a whole number with an optional unit b, k, m, g or t, like 10m or 1g", s))
	}
	return n * mult, nil
}

// ParseMemory parses a size as --memory and --disk-size take it, returned
// in MiB: the units of ParseSize, the number may have a fraction (1.5g).
// Sizes past the int32 range are clamped (a host's limits refuse them).
func ParseMemory(s string) (int, error) {
	bad := func() (int, error) {
		return 0, errdefs.Invalid(fmt.Sprintf("invalid memory %q: want a size like 256m or 1g (units b, k, m, g, t)", s))
	}
	num, mult := splitSize(s)
	if num == "" {
		return bad()
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return bad()
	}
	mib := v * float64(mult) / (1 << 20)
	if mib > math.MaxInt32 {
		return math.MaxInt32, nil
	}
	if mib > 0 && mib < 1 {
		return 0, errdefs.Invalid(fmt.Sprintf("invalid memory %q: below 1m", s))
	}
	return int(mib), nil
}

// FormatMiB formats a size in MiB the way ParseMemory reads it.
func FormatMiB(mib int) string {
	if mib > 0 && mib%1024 == 0 {
		return strconv.Itoa(mib/1024) + "g"
	}
	return strconv.Itoa(mib) + "m"
}

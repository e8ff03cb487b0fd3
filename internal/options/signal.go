package options

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/errdefs"
)

// ParseSignal parses a signal as docker's kill -s, --stop-signal or an
// image config gives it, in any case: "SIGTERM", "TERM", "term", "15",
// "SIGRTMIN+3". The error names the bad value and what is allowed.
func ParseSignal(s string) (int, error) {
	bad := func() (int, error) {
		return 0, errdefs.Invalid(fmt.Sprintf("invalid signal %q: use a name like TERM, HUP, USR1 or RTMIN+3, or a number from 1 to 64", s))
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return bad()
		}
		return n, nil
	}
	u := strings.ToUpper(s)
	if !strings.HasPrefix(u, "SIG") {
		u = "SIG" + u
	}
	if base, off, ok := strings.Cut(u, "+"); ok && base == "SIGRTMIN" {
		n, err := strconv.Atoi(off)
		if err != nil || n < 0 || 34+n > 64 {
			return bad()
		}
		return 34 + n, nil
	}
	if u == "SIGRTMIN" {
		return 34, nil
	}
	if sig := unix.SignalNum(u); sig != 0 {
		return int(sig), nil
	}
	return bad()
}

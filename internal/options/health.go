package options

import (
	"fmt"

	"kiln.dev/kiln/internal/errdefs"
)

// Actions on an unhealthy VM (--health-on-failure), as podman's.
const (
	OnFailureNone    = "none"
	OnFailureKill    = "kill"
	OnFailureRestart = "restart"
	OnFailureStop    = "stop"
)

// ValidateOnFailure checks a --health-on-failure action.
func ValidateOnFailure(a string) error {
	switch a {
	case "", OnFailureNone, OnFailureKill, OnFailureRestart, OnFailureStop:
		return nil
	}
	return errdefs.Invalid(fmt.Sprintf("invalid health-on-failure action %q: use none, kill, restart or stop", a))
}

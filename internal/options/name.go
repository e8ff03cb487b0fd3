package options

import (
	"fmt"
	"regexp"

	"kiln.dev/kiln/internal/errdefs"
)

// nameRE is the grammar of the names a user gives VMs and checkpoints, as
// docker's container names: 1-63 letters, digits, '_', '.' or '-',
// starting with a letter or digit.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// ValidateName reports whether name can name a kind ("VM", "checkpoint"),
// as an invalid argument naming the value and what is allowed.
func ValidateName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return errdefs.Invalid(fmt.Sprintf("invalid %s name %q: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit", kind, name))
	}
	return nil
}

// ValidateCheckpointName reports whether name can name a checkpoint.
func ValidateCheckpointName(name string) error { return ValidateName("checkpoint", name) }

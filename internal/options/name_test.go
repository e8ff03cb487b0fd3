package options

import (
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

func TestValidateCheckpointName(t *testing.T) {
	for _, ok := range []string{"cp1", "a", "before-upgrade_2.0", strings.Repeat("x", 63)} {
		if err := ValidateCheckpointName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-cp", ".cp", "a/b", "a b", "..", strings.Repeat("x", 64)} {
		err := ValidateCheckpointName(bad)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "letters, digits") {
			t.Errorf("%q: %v, want an invalid argument saying what is allowed", bad, err)
		}
	}
}

package options

import (
	"testing"

	"kiln.dev/kiln/internal/testenv"
)

// checkInvalid fails unless err is an ErrInvalidArgument that mentions each
// of subs.
func checkInvalid(t *testing.T, err error, subs ...string) {
	t.Helper()
	testenv.CheckInvalid(t, err, subs...)
}

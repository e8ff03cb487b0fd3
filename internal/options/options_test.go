package options

import (
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

// checkInvalid fails unless err is an ErrInvalidArgument that mentions each
// of subs.
func checkInvalid(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one mentioning %q", subs)
	}
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("error %q is not ErrInvalidArgument", err)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

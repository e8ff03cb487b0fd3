package testenv

import (
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

// CheckInvalid fails t unless err is an errdefs.ErrInvalidArgument whose
// message mentions each of subs: kiln's errors name the bad value and what
// is allowed.
func CheckInvalid(t testing.TB, err error, subs ...string) {
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

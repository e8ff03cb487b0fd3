package vm

import (
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
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

func TestCheckpointableRefusesDataOutsideTheVM(t *testing.T) {
	for _, c := range []struct {
		mount options.Mount
		want  string // "" for allowed
	}{
		{options.Mount{Type: options.MountBake, Source: "/srv/site", Target: "/site", ReadOnly: true}, ""},
		{options.Mount{Type: options.MountBind, Source: "/srv/shared", Target: "/data"}, "host directory /srv/shared"},
		{options.Mount{Type: options.MountVolume, Source: "db", Target: "/var/lib/db"}, "volume db"},
	} {
		v := &VM{Name: "web", Spec: Spec{Mounts: []options.Mount{c.mount}}}
		err := v.Checkpointable()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.mount, err)
		case c.want != "" && (!errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an invalid argument naming %q", c.mount, err, c.want)
		}
	}
}

package options

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/testenv"
)

func TestParseUlimit(t *testing.T) {
	tests := []struct {
		in      string
		want    api.Ulimit
		wantErr string
	}{
		{in: "nofile=1024:4096", want: api.Ulimit{Name: "nofile", Soft: 1024, Hard: 4096}},
		{in: "nofile=1024", want: api.Ulimit{Name: "nofile", Soft: 1024, Hard: 1024}},
		{in: "nproc=unlimited", want: api.Ulimit{Name: "nproc", Soft: math.MaxUint64, Hard: math.MaxUint64}},
		{in: "core=0:unlimited", want: api.Ulimit{Name: "core", Soft: 0, Hard: math.MaxUint64}},
		{in: "stack=-1", want: api.Ulimit{Name: "stack", Soft: math.MaxUint64, Hard: math.MaxUint64}},
		{in: "bogus=1", wantErr: "bogus"},
		{in: "nofile=5:1", wantErr: "soft limit above hard"},
		{in: "nofile=unlimited:5", wantErr: "soft limit above hard"},
		{in: "nofile", wantErr: "name=soft"},
		{in: "nofile=", wantErr: "soft limit"},
		{in: "nofile=x", wantErr: "soft limit"},
		{in: "nofile=1:", wantErr: "hard limit"},
		{in: "nofile=1:y", wantErr: "hard limit"},
		{in: "nofile=-2", wantErr: "soft limit"},
		{in: "NOFILE=1", wantErr: "NOFILE"},
		{in: "=1", wantErr: `"=1"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseUlimit(tt.in)
			if tt.wantErr != "" {
				testenv.CheckInvalid(t, err, tt.wantErr, tt.in)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseUlimit(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func FuzzParseUlimit(f *testing.F) {
	for _, s := range []string{"nofile=1024:4096", "nofile=1024", "nproc=unlimited", "bogus=1", "nofile=5:1", "nofile", "core=-1:-1", "=", "nofile=1:2:3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseUlimit(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseUlimit(%q) error %v is not ErrInvalidArgument", s, err)
			}
			return
		}
		if _, ok := agent.RlimitResources[r.Name]; !ok {
			t.Fatalf("ParseUlimit(%q) gave unknown resource %q", s, r.Name)
		}
		if r.Soft > r.Hard {
			t.Fatalf("ParseUlimit(%q) = %+v: soft above hard", s, r)
		}
		back, err := ParseUlimit(fmt.Sprintf("%s=%d:%d", r.Name, r.Soft, r.Hard))
		if err != nil || back != r {
			t.Fatalf("ParseUlimit(%q) = %+v, but re-parsing it gives %+v, %v", s, r, back, err)
		}
		// What kiln-init receives passes the agent's own check.
		spec := agent.Spec{Version: agent.Version, Args: []string{"x"}, Rlimits: []agent.Rlimit{{Name: r.Name, Soft: r.Soft, Hard: r.Hard}}}
		if err := spec.Validate(); err != nil {
			t.Fatalf("ParseUlimit(%q) = %+v, which agent.Spec.Validate rejects: %v", s, r, err)
		}
	})
}

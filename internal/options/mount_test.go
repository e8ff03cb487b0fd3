package options

import (
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

func TestParseVolumeFlag(t *testing.T) {
	tests := []struct {
		in     string
		want   Mount
		errHas string
	}{
		{"pgdata:/var/lib/postgresql/data", Mount{Type: MountVolume, Source: "pgdata", Target: "/var/lib/postgresql/data"}, ""},
		{"pgdata:/data:ro", Mount{Type: MountVolume, Source: "pgdata", Target: "/data", ReadOnly: true}, ""},
		{"/srv/site:/usr/share/nginx/html:ro", Mount{Type: MountBind, Source: "/srv/site", Target: "/usr/share/nginx/html", ReadOnly: true}, ""},
		{"/srv/site:/html:rw", Mount{Type: MountBind, Source: "/srv/site", Target: "/html"}, ""},
		{"data/x:/x", Mount{}, `host path "data/x" is relative`},
		{"./x:/x", Mount{}, `host path "./x" is relative`},
		{"../x:/x", Mount{}, "relative"},
		{".hidden:/x", Mount{}, "relative"},
		{"/data", Mount{Type: MountVolume, Target: "/data", Anonymous: true}, ""},
		{"data", Mount{}, "or /guest/path (an anonymous volume)"},
		{"a:/b:ro:extra", Mount{}, "want NAME:/guest/path"},
		{":/x", Mount{}, "no source"},
		{"v:/x:rx", Mount{}, `unknown option "rx"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseVolumeFlag(tt.in)
			checkParse(t, got, err, tt.want, tt.errHas)
		})
	}
}

func TestParseMountFlag(t *testing.T) {
	tests := []struct {
		in     string
		want   Mount
		errHas string
	}{
		{"type=volume,src=v,dst=/data", Mount{Type: MountVolume, Source: "v", Target: "/data"}, ""},
		{"source=v,target=/data,readonly", Mount{Type: MountVolume, Source: "v", Target: "/data", ReadOnly: true}, ""},
		{"type=bind,src=/srv,destination=/srv,readonly=false", Mount{Type: MountBind, Source: "/srv", Target: "/srv"}, ""},
		{"type=bind,src=/srv,dst=/srv,ro=true", Mount{Type: MountBind, Source: "/srv", Target: "/srv", ReadOnly: true}, ""},
		{"type=bake,src=/etc/app,dst=/etc/app", Mount{Type: MountBake, Source: "/etc/app", Target: "/etc/app", ReadOnly: true}, ""},
		{"type=tmpfs,dst=/x", Mount{}, `unknown type "tmpfs"`},
		{"type=bind,src=/a,dst=/b,propagation=shared", Mount{}, `unknown key "propagation"`},
		{"type=bind,src=/a,dst=/b,readonly=maybe", Mount{}, `readonly="maybe"`},
		{"type=bind,dst=/b", Mount{}, "no src"},
		{"type=volume,dst=/data", Mount{Type: MountVolume, Target: "/data", Anonymous: true}, ""},
		{"dst=/data,readonly", Mount{Type: MountVolume, Target: "/data", Anonymous: true, ReadOnly: true}, ""},
		{"type=bind,src=/a", Mount{}, "no dst"},
		{"src=/a,src=/b,dst=/c", Mount{}, "source given twice"},
		{"type,src=/a,dst=/b", Mount{}, "type needs a value"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseMountFlag(tt.in)
			checkParse(t, got, err, tt.want, tt.errHas)
		})
	}
}

func checkParse(t *testing.T, got Mount, err error, want Mount, errHas string) {
	t.Helper()
	if errHas != "" {
		if err == nil || !strings.Contains(err.Error(), errHas) || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("got %+v, %v; want an invalid-argument error containing %q", got, err, errHas)
		}
		return
	}
	if err != nil {
		t.Fatalf("error %v, want %+v", err, want)
	}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestValidateMounts(t *testing.T) {
	vol := func(src, dst string) Mount {
		return Mount{Type: MountVolume, Source: src, Target: dst}
	}
	tests := []struct {
		name   string
		ms     []Mount
		errHas string
	}{
		{"ok", []Mount{vol("a", "/data"), {Type: MountBind, Source: "/srv", Target: "/srv"}}, ""},
		{"target /", []Mount{vol("a", "/")}, `target "/"`},
		{"target /proc", []Mount{vol("a", "/proc")}, `"/proc"`},
		{"under /sys", []Mount{vol("a", "/sys/kernel")}, `"/sys/kernel"`},
		{"target /dev", []Mount{vol("a", "/dev/")}, `"/dev"`},
		{"/devices is fine", []Mount{vol("a", "/devices")}, ""},
		{"relative target", []Mount{vol("a", "data")}, "must be an absolute path"},
		{"same target twice", []Mount{vol("a", "/data"), vol("b", "/data/")}, "two mounts on /data"},
		{"volume name with slash", []Mount{vol("a/b", "/data")}, `invalid volume name "a/b"`},
		{"volume name with space", []Mount{vol("a b", "/data")}, `invalid volume name`},
		{"relative bind", []Mount{{Type: MountBind, Source: "x", Target: "/x"}}, "must be absolute"},
		{"unknown type", []Mount{{Type: "nfs", Source: "x", Target: "/x"}}, `invalid mount type "nfs"`},
		{"anonymous volume", []Mount{{Type: MountVolume, Target: "/x", Anonymous: true}}, ""},
		{"anonymous bind", []Mount{{Type: MountBind, Source: "/srv", Target: "/x", Anonymous: true}}, "only a volume can be anonymous"},
		{"volume without a name", []Mount{vol("", "/x")}, "invalid volume name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateMounts(tt.ms)
			switch {
			case tt.errHas == "" && err != nil:
				t.Errorf("ValidateMounts: %v, want nil", err)
			case tt.errHas != "" && (err == nil || !strings.Contains(err.Error(), tt.errHas) || !errors.Is(err, errdefs.ErrInvalidArgument)):
				t.Errorf("ValidateMounts: %v, want an invalid-argument error containing %q", err, tt.errHas)
			}
		})
	}
}

package runtime

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/volume"
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
	vol := func(src, dst string) Mount { return Mount{Type: MountVolume, Source: src, Target: dst} }
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

func TestCheckMountSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkMountSources([]Mount{{Type: MountBind, Source: dir, Target: "/x"}}); err != nil {
		t.Errorf("a directory: %v", err)
	}
	if err := checkMountSources([]Mount{{Type: MountBake, Source: file, Target: "/x"}}); err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Errorf("a file: %v, want 'is not a directory'", err)
	}
	missing := filepath.Join(dir, "missing")
	if err := checkMountSources([]Mount{{Type: MountBind, Source: missing, Target: "/x"}}); err == nil || !strings.Contains(err.Error(), missing+" (") {
		t.Errorf("missing: %v, want an error naming it", err)
	}
}

func TestRunningFirst(t *testing.T) {
	recs := []*state.VM{
		{ID: "a", Status: state.StatusExited},
		{ID: "b", Status: state.StatusRunning},
		{ID: "c", Status: state.StatusCreated},
		{ID: "d", Status: state.StatusStopping},
		{ID: "e", Status: state.StatusRestarting},
	}
	runningFirst(recs)
	var got []string
	for _, r := range recs {
		got = append(got, r.ID)
	}
	if strings.Join(got, "") != "bdace" {
		t.Errorf("order %v, want b d a c e", got)
	}
}

// A VM discarded after Create (a later step of creating it failed) takes
// the volumes made for it along, and leaves volumes that existed before.
func TestDiscardRemovesOnlyTheVolumesMadeForTheVM(t *testing.T) {
	if _, err := disk.FindTool("mkfs.ext4", "e2fsprogs"); err != nil {
		t.Skipf("%v: run scripts/setup", err)
	}
	ctx := context.Background()
	store, err := volume.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Create(ctx, "old", volume.MinSizeMiB); err != nil {
		t.Fatal(err)
	}
	p := &mountPlan{store: store}
	for _, name := range []string{"old", "new"} {
		if _, err := p.volume(ctx, Mount{Type: MountVolume, Source: name}); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(t.TempDir(), "vm")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	vm := &VM{Name: "v", Dir: dir, undoMounts: p.undo}
	if err := vm.Discard(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the VM directory is still there: %v", err)
	}
	if _, err := store.Get("new"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the volume made for the VM is still there: %v", err)
	}
	if _, err := store.Get("old"); err != nil {
		t.Errorf("the volume that existed before is gone: %v", err)
	}
}

// An anonymous volume gets a volume of its own with a random 32-hex name,
// written into the spec so that every start attaches the same one.
func TestPlanNamesAnonymousVolumes(t *testing.T) {
	if _, err := disk.FindTool("mkfs.ext4", "e2fsprogs"); err != nil {
		t.Skipf("%v: run scripts/setup", err)
	}
	r, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := Spec{Mounts: []Mount{
		{Type: MountVolume, Target: "/b", Anonymous: true},
		{Type: MountVolume, Target: "/a", Anonymous: true},
	}}
	p, err := r.planMounts(context.Background(), t.TempDir(), &s)
	if err != nil {
		t.Fatal(err)
	}
	store, err := r.Volumes()
	if err != nil {
		t.Fatal(err)
	}
	hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)
	names := map[string]bool{}
	for _, m := range s.Mounts {
		if !hex32.MatchString(m.Source) {
			t.Fatalf("anonymous volume at %s named %q, want 32 hex digits", m.Target, m.Source)
		}
		v, err := store.Get(m.Source)
		if err != nil || !v.Anonymous {
			t.Errorf("volume %s: %+v, %v; want an anonymous volume", m.Source, v, err)
		}
		names[m.Source] = true
	}
	if len(names) != 2 || len(p.drives) != 2 {
		t.Errorf("two anonymous mounts got volumes %v and drives %v, want two of each", names, p.drives)
	}
	p.undo()
	if vs, _ := store.List(); len(vs) != 0 {
		t.Errorf("undo left %d volumes", len(vs))
	}
}

// A plan that fails part way removes the volumes it made, and only those.
func TestPlanFailureUndoesItsVolumes(t *testing.T) {
	if _, err := disk.FindTool("mkfs.ext4", "e2fsprogs"); err != nil {
		t.Skipf("%v: run scripts/setup", err)
	}
	r, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store, err := r.Volumes()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Create(context.Background(), "old", volume.MinSizeMiB); err != nil {
		t.Fatal(err)
	}
	s := Spec{Mounts: []Mount{
		{Type: MountVolume, Source: "old", Target: "/a"},
		{Type: MountVolume, Source: "new", Target: "/b"},
		{Type: MountVolume, Target: "/c", Anonymous: true},
		{Type: MountVolume, Source: "bad/name", Target: "/d"},
	}}
	if _, err := r.planMounts(context.Background(), t.TempDir(), &s); err == nil {
		t.Fatal("a plan with a bad volume name succeeded")
	}
	vs, err := store.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || vs[0].Name != "old" {
		t.Errorf("after a failed plan the volumes are %v, want only the one from before", vs)
	}
}

package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/volume"
)

func TestCheckMountSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkMountSources([]options.Mount{{Type: options.MountBind, Source: dir, Target: "/x"}}); err != nil {
		t.Errorf("a directory: %v", err)
	}
	if err := checkMountSources([]options.Mount{{Type: options.MountBake, Source: file, Target: "/x"}}); err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Errorf("a file: %v, want 'is not a directory'", err)
	}
	missing := filepath.Join(dir, "missing")
	if err := checkMountSources([]options.Mount{{Type: options.MountBind, Source: missing, Target: "/x"}}); err == nil || !strings.Contains(err.Error(), missing+" (") {
		t.Errorf("missing: %v, want an error naming it", err)
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
	if _, err := store.Create(ctx, "old", volume.MinSizeMiB, nil); err != nil {
		t.Fatal(err)
	}
	p := &mountPlan{store: store}
	for _, name := range []string{"old", "new"} {
		if _, err := p.volume(ctx, options.Mount{Type: options.MountVolume, Source: name}); err != nil {
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
	s := Spec{VMConfig: api.VMConfig{Mounts: []options.Mount{
		{Type: options.MountVolume, Target: "/b", Anonymous: true},
		{Type: options.MountVolume, Target: "/a", Anonymous: true},
	}}}
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
	if _, err := store.Create(context.Background(), "old", volume.MinSizeMiB, nil); err != nil {
		t.Fatal(err)
	}
	s := Spec{VMConfig: api.VMConfig{Mounts: []options.Mount{
		{Type: options.MountVolume, Source: "old", Target: "/a"},
		{Type: options.MountVolume, Source: "new", Target: "/b"},
		{Type: options.MountVolume, Target: "/c", Anonymous: true},
		{Type: options.MountVolume, Source: "bad/name", Target: "/d"},
	}}}
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

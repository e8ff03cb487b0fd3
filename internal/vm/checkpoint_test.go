package vm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vmm"
)

func TestCheckpointableRefusesDataOutsideTheVM(t *testing.T) {
	for _, c := range []struct {
		mount options.Mount
		want  string // "" for allowed
	}{
		{options.Mount{Type: options.MountBake, Source: "/srv/site", Target: "/site", ReadOnly: true}, ""},
		{options.Mount{Type: options.MountBind, Source: "/srv/shared", Target: "/data"}, "host directory /srv/shared"},
		{options.Mount{Type: options.MountVolume, Source: "db", Target: "/var/lib/db"}, "volume db"},
	} {
		v := &VM{Name: "web", Spec: Spec{VMConfig: api.VMConfig{Mounts: []options.Mount{c.mount}}}}
		err := v.Checkpointable()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", options.FormatMount(c.mount), err)
		case c.want != "" && (!errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an invalid argument naming %q", options.FormatMount(c.mount), err, c.want)
		}
	}
}

// A checkpoint made by a VM of another configuration is refused before
// anything is touched; Checkpoints lists only finished checkpoints.
func TestRestoreRefusesAnotherTopology(t *testing.T) {
	dir := t.TempDir()
	v := &VM{Name: "web", Dir: dir, cfg: vmm.Config{ID: "x", Dir: dir, Kernel: "/k", MemoryMiB: 128, CPUs: 1, Accel: vmm.AccelTCG}}
	cp := Checkpoint{Name: "cp1", Created: time.Now().UTC(), Topology: v.topology()}
	write := func(name string, cp Checkpoint) {
		t.Helper()
		d := CheckpointDir(dir, name)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(cp)
		if err := os.WriteFile(filepath.Join(d, checkpointMeta), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("cp1", cp)
	if err := os.MkdirAll(filepath.Join(dir, checkpointsDir, ".new-cp2-123"), 0o700); err != nil {
		t.Fatal(err)
	}
	cps, err := v.Checkpoints()
	if err != nil || len(cps) != 1 || cps[0].Name != "cp1" {
		t.Fatalf("Checkpoints = %+v, %v; want cp1 alone", cps, err)
	}
	v.cfg.MemoryMiB = 256
	if err := v.Restore(context.Background(), "cp1"); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "another configuration") {
		t.Errorf("Restore of a 128 MiB checkpoint into a 256 MiB VM = %v", err)
	}
	if err := v.Restore(context.Background(), "cp9"); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), `"cp9"`) {
		t.Errorf("Restore of a missing checkpoint = %v", err)
	}
	if err := v.RemoveCheckpoint("cp1"); err != nil {
		t.Fatal(err)
	}
	if cps, _ := v.Checkpoints(); len(cps) != 0 {
		t.Errorf("after RemoveCheckpoint: %+v", cps)
	}
}

package supervisor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/vmm/vmmtest"
)

// A checkpoint that cannot be made (bad name, VM not running, a backend
// that cannot save) is refused with its kind of error, leaves no
// checkpoint directory and the VM as it was.
func TestFakeCheckpointRefusals(t *testing.T) {
	b := &vmmtest.Backend{Script: func(string, int) vmmtest.Script {
		return vmmtest.Script{RunFor: time.Hour}
	}}
	d := newFakeDaemon(t, b)
	ctx := context.Background()
	v := d.run(d.spec("web"), Options{})
	d.waitFor("web", "running", func(v *View) bool { return v.Record.Status == state.StatusRunning })
	if _, _, err := d.sup.Create(ctx, d.spec("idle")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ref, name string
		kind      error
		want      string
	}{
		{"web", "a/b", errdefs.ErrInvalidArgument, `"a/b"`},
		{"idle", "cp1", errdefs.ErrConflict, "not running"},
		{"nosuch", "cp1", errdefs.ErrNotFound, "nosuch"},
		{"web", "cp1", errdefs.ErrUnavailable, "cannot save"},
	} {
		err := d.sup.Checkpoint(ctx, c.ref, c.name, false)
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Checkpoint(%s, %s) = %v; want %v naming %q", c.ref, c.name, err, c.kind, c.want)
		}
	}
	if err := d.sup.StartFrom(ctx, "idle", "nope"); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("StartFrom a missing checkpoint = %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(v.Dir, "checkpoints"))
	if len(ents) != 0 {
		t.Errorf("refused checkpoints left %v", ents)
	}
	if cps, err := d.sup.Checkpoints(ctx, "web"); err != nil || len(cps) != 0 {
		t.Errorf("Checkpoints = %v, %v", cps, err)
	}
	got, err := d.sup.Get(ctx, "web")
	if err != nil || got.Record.Status != state.StatusRunning || got.Record.Desired != state.DesiredRunning {
		t.Errorf("after refused checkpoints the VM is %+v (%v), want it running", got.Record, err)
	}
}

package supervisor

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/vmm/vmmtest"
)

// A VM that exits 0 is recorded exited with its code and its output.
func TestFakeRunExits(t *testing.T) {
	b := &vmmtest.Backend{Script: func(string, int) vmmtest.Script {
		return vmmtest.Script{Stdout: "hello\n", RunFor: 50 * time.Millisecond, ExitCode: 3}
	}}
	d := newFakeDaemon(t, b)
	v := d.run(d.spec("exits"), Options{})
	code, msg, err := d.sup.Wait(context.Background(), v.Record.ID, false, nil)
	if err != nil || code != 3 || msg != "" {
		t.Fatalf("Wait = %d, %q, %v; want 3", code, msg, err)
	}
	got := d.waitFor("exits", "exited", func(v *View) bool { return v.Record.Status == state.StatusExited })
	if got.Record.ExitCode != 3 || got.Record.BootUptime == 0 {
		t.Errorf("record %+v", got.Record)
	}
	entries, _, cancel, err := d.sup.Logs(context.Background(), "exits", LogQuery{Tail: -1})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if len(entries) != 1 || entries[0].Line != "hello\n" {
		t.Errorf("logs = %+v", entries)
	}
}

// on-failure:N restarts a failing VM N times with growing delays, then
// leaves it exited.
func TestFakeRestartOnFailureMaxRetries(t *testing.T) {
	b := &vmmtest.Backend{Script: func(string, int) vmmtest.Script {
		return vmmtest.Script{RunFor: 10 * time.Millisecond, ExitCode: 1}
	}}
	d := newFakeDaemon(t, b)
	begin := time.Now()
	v := d.run(d.spec("flaky"), Options{Restart: options.RestartPolicy{Name: options.RestartOnFailure, MaxRetries: 3}})
	got := d.waitFor("flaky", "exited after its retries", func(v *View) bool {
		return v.Record.Status == state.StatusExited && v.Record.RestartCount == 3
	})
	took := time.Since(begin)
	if got.Record.ExitCode != 1 || got.Record.Desired != state.DesiredRunning {
		t.Errorf("record %+v", got.Record)
	}
	// Backoff: 100 + 200 + 400 ms between the four runs.
	if min := Backoff(0) + Backoff(1) + Backoff(2); took < min {
		t.Errorf("four runs took %s: less than the backoff, %s", took, min)
	}
	time.Sleep(Backoff(3) + 100*time.Millisecond)
	if n := b.Starts(v.Record.ID); n != 4 {
		t.Errorf("started %d times, want 4", n)
	}
}

// on-failure does not restart a VM that succeeded.
func TestFakeRestartOnFailureSuccess(t *testing.T) {
	b := &vmmtest.Backend{Script: func(string, int) vmmtest.Script {
		return vmmtest.Script{RunFor: 10 * time.Millisecond}
	}}
	d := newFakeDaemon(t, b)
	v := d.run(d.spec("ok"), Options{Restart: options.RestartPolicy{Name: options.RestartOnFailure}})
	d.waitFor("ok", "exited", func(v *View) bool { return v.Record.Status == state.StatusExited })
	time.Sleep(Backoff(0) + 100*time.Millisecond)
	if n := b.Starts(v.Record.ID); n != 1 {
		t.Errorf("started %d times, want 1", n)
	}
}

// always restarts a VM whatever its exit; a stop keeps it stopped.
func TestFakeRestartAlwaysUntilStopped(t *testing.T) {
	b := &vmmtest.Backend{Script: func(_ string, run int) vmmtest.Script {
		if run >= 2 {
			return vmmtest.Script{RunFor: vmmtest.Forever}
		}
		return vmmtest.Script{RunFor: 10 * time.Millisecond, ExitCode: run}
	}}
	d := newFakeDaemon(t, b)
	v := d.run(d.spec("always"), Options{Restart: options.RestartPolicy{Name: options.RestartAlways}})
	d.waitFor("always", "its third run", func(v *View) bool {
		return v.Record.Status == state.StatusRunning && v.Record.RestartCount == 2
	})
	if err := d.sup.Stop(context.Background(), "always", time.Second); err != nil {
		t.Fatal(err)
	}
	got := d.waitFor("always", "stopped", func(v *View) bool { return v.Record.Status == state.StatusExited })
	if got.Record.Desired != state.DesiredStopped {
		t.Errorf("record %+v", got.Record)
	}
	time.Sleep(Backoff(2) + 100*time.Millisecond)
	if n := b.Starts(v.Record.ID); n != 3 {
		t.Errorf("started %d times, want 3", n)
	}
}

// A VM whose boot hangs is killed at its boot deadline and recorded as a
// failed boot (125), with its console's last lines.
func TestFakeBootTimeout(t *testing.T) {
	b := &vmmtest.Backend{Script: func(string, int) vmmtest.Script {
		return vmmtest.Script{Hang: true, Console: "Probing EDD\n"}
	}}
	d := newFakeDaemon(t, b)
	s := d.spec("hangs")
	s.BootTimeout = api.Duration(200 * time.Millisecond)
	v := d.run(s, Options{})
	code, msg, err := d.sup.Wait(context.Background(), v.Record.ID, false, nil)
	if err != nil || code != 125 || !strings.Contains(msg, "did not reach kiln-init") || !strings.Contains(msg, "Probing EDD") {
		t.Fatalf("Wait = %d, %q, %v", code, msg, err)
	}
}

// rm -f of a VM hanging in its boot removes it whole: no machine, no
// directory, no record, no goroutine of its own left.
func TestFakeRemoveDuringBoot(t *testing.T) {
	b := &vmmtest.Backend{Script: func(string, int) vmmtest.Script { return vmmtest.Script{Hang: true} }}
	d := newFakeDaemon(t, b)
	before := countGoroutines()
	v := d.run(d.spec("booting"), Options{Restart: options.RestartPolicy{Name: options.RestartAlways}})
	if err := d.sup.Remove(context.Background(), "booting", RemoveOptions{}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("rm without -f: %v, want a conflict", err)
	}
	if err := d.sup.Remove(context.Background(), "booting", RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if b.Running() != 0 {
		t.Errorf("%d fake machines run on", b.Running())
	}
	if _, err := os.Stat(d.rt.VMDir(v.Record.ID)); !os.IsNotExist(err) {
		t.Errorf("VM directory: %v", err)
	}
	if _, err := d.db.GetVM(context.Background(), v.Record.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("record: %v, want not found", err)
	}
	if n := b.Starts(v.Record.ID); n != 1 {
		t.Errorf("started %d times: a removed VM is not restarted", n)
	}
	waitGoroutines(t, before)
}

// After a daemon restart, a VM whose machine still runs is attached and
// watched to its end; one whose machine ended meanwhile is recorded from
// what its guest left, and restarted by its policy.
func TestFakeReconcile(t *testing.T) {
	b := &vmmtest.Backend{}
	d := newFakeDaemon(t, b)
	alive := d.run(d.spec("alive"), Options{})
	gone := d.run(d.spec("gone"), Options{Restart: options.RestartPolicy{Name: options.RestartUnlessStopped}})
	d.waitFor("alive", "started", func(v *View) bool { return v.Record.BootUptime > 0 })
	d.waitFor("gone", "started", func(v *View) bool { return v.Record.BootUptime > 0 })
	d.close()

	// While no daemon runs: "gone" dies, "alive" runs on.
	b.Machine(gone.Record.ID).Kill()
	d.open()
	a := d.waitFor("alive", "attached", func(v *View) bool { return v.Record.Status == state.StatusRunning })
	if n := b.Starts(alive.Record.ID); n != 1 {
		t.Errorf("alive: started %d times; want it attached, not started again", n)
	}
	if a.Record.PID != b.Machine(alive.Record.ID).Info().PID {
		t.Errorf("alive: PID %d, machine's %d", a.Record.PID, b.Machine(alive.Record.ID).Info().PID)
	}
	g := d.waitFor("gone", "restarted", func(v *View) bool { return v.Record.Status == state.StatusRunning })
	if g.Record.RestartCount != 1 || b.Starts(gone.Record.ID) != 2 {
		t.Errorf("gone: record %+v, %d starts; want restarted once", g.Record, b.Starts(gone.Record.ID))
	}
	events, err := d.db.Events(context.Background(), time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	died := false
	for _, e := range events {
		died = died || e.VMID == gone.Record.ID && e.Action == EventDied && e.Attrs == "exitCode=137"
	}
	if !died {
		t.Errorf("gone: no died event with code 137 in %+v", events)
	}
	// The attached VM is watched: its end is recorded.
	b.Machine(alive.Record.ID).Kill()
	d.waitFor("alive", "exited", func(v *View) bool { return v.Record.Status == state.StatusExited })
	for _, id := range []string{alive.Record.ID, gone.Record.ID} {
		if err := d.sup.Remove(context.Background(), id, RemoveOptions{Force: true}); err != nil {
			t.Error(err)
		}
	}
}

// Close cancels and waits for every goroutine of the supervisor, with VMs
// running, booting and between restarts; after it nothing is written to
// the store, even as the VMs end, and the VMs were left running.
func TestFakeCloseWaitsAndWritesNothing(t *testing.T) {
	b := &vmmtest.Backend{Script: func(id string, run int) vmmtest.Script {
		return vmmtest.Script{RunFor: vmmtest.Forever}
	}}
	before := countGoroutines()
	d := newFakeDaemon(t, b)
	hang := map[string]bool{}
	flap := map[string]bool{}
	b.Script = func(id string, run int) vmmtest.Script {
		switch {
		case hang[id]:
			return vmmtest.Script{Hang: true}
		case flap[id]:
			return vmmtest.Script{RunFor: 5 * time.Millisecond, ExitCode: 1}
		}
		return vmmtest.Script{RunFor: vmmtest.Forever}
	}
	var ids []string
	for _, name := range []string{"running", "booting", "flapping"} {
		v, _, err := d.sup.Create(context.Background(), withOptions(d.spec(name), Options{Restart: options.RestartPolicy{Name: options.RestartAlways}}))
		if err != nil {
			t.Fatal(err)
		}
		hang[v.Record.ID], flap[v.Record.ID] = name == "booting", name == "flapping"
		if err := d.sup.Start(context.Background(), v.Record.ID); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.Record.ID)
	}
	d.waitFor("running", "started", func(v *View) bool { return v.Record.BootUptime > 0 })
	d.waitFor("flapping", "restarted", func(v *View) bool { return v.Record.RestartCount > 0 })
	sup := d.sup
	begin := time.Now()
	sup.Close()
	if took := time.Since(begin); took > 3*time.Second {
		t.Errorf("Close took %s", took)
	}
	snapshot := func() string {
		vms, err := d.db.ListVMs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		events, err := d.db.Events(context.Background(), time.Time{}, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal([]any{vms, events})
		return string(b)
	}
	was := snapshot()
	if m := b.Machine(ids[0]); m == nil || !m.Info().Running {
		t.Errorf("a running VM did not run on after Close")
	}
	for _, id := range ids {
		if _, err := b.Reap("", id); err != nil {
			t.Error(err)
		}
	}
	time.Sleep(300 * time.Millisecond) // a restart's backoff, were one pending
	if now := snapshot(); now != was {
		t.Errorf("the store changed after Close:\nwas %s\nnow %s", was, now)
	}
	d.db.Close()
	d.sup = nil
	waitGoroutines(t, before)
}

// While a VM's monitor is coming up, ps and inspect answer at once (the
// VM shows as starting), and rm -f waits for the start and then removes
// the VM whole.
func TestFakeListWhileStarting(t *testing.T) {
	release := make(chan struct{})
	b := &vmmtest.Backend{}
	d := newFakeDaemon(t, b)
	before := countGoroutines()
	d.run(d.spec("other"), Options{}) // runs already
	b.Script = func(string, int) vmmtest.Script {
		return vmmtest.Script{Block: release, RunFor: vmmtest.Forever}
	}
	v, _, err := d.sup.Create(context.Background(), d.spec("slow"))
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- d.sup.Start(context.Background(), v.Record.ID) }()
	d.waitFor("slow", "starting", func(v *View) bool { return v.Record.Status == state.StatusStarting })
	answered := make(chan error, 1)
	go func() {
		vs, err := d.sup.List(context.Background())
		if err == nil && len(vs) != 2 {
			err = fmt.Errorf("%d VMs, want 2", len(vs))
		}
		if err == nil {
			_, err = d.sup.Get(context.Background(), "slow")
		}
		answered <- err
	}()
	select {
	case err := <-answered:
		if err != nil {
			t.Fatalf("List and Get while a VM starts: %v", err)
		}
	case <-time.After(2 * time.Second):
		close(release)
		t.Fatal("List and Get wait for a VM that starts")
	}
	removed := make(chan error, 1)
	go func() { removed <- d.sup.Remove(context.Background(), "slow", RemoveOptions{Force: true}) }()
	select {
	case err := <-removed:
		t.Fatalf("rm -f returned during the start: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-started; err != nil {
		t.Errorf("Start: %v", err)
	}
	if err := <-removed; err != nil {
		t.Errorf("rm -f: %v", err)
	}
	if b.Machine(v.Record.ID) != nil {
		t.Error("the removed VM's machine runs on")
	}
	if _, err := os.Stat(d.rt.VMDir(v.Record.ID)); !os.IsNotExist(err) {
		t.Errorf("VM directory: %v", err)
	}
	if err := d.sup.Remove(context.Background(), "other", RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	waitGoroutines(t, before)
}

// A stop asked while the VM starts waits for the start, then stops it,
// and the VM stays stopped.
func TestFakeStopWhileStarting(t *testing.T) {
	release := make(chan struct{})
	b := &vmmtest.Backend{Script: func(string, int) vmmtest.Script {
		return vmmtest.Script{Block: release, RunFor: vmmtest.Forever}
	}}
	d := newFakeDaemon(t, b)
	v, _, err := d.sup.Create(context.Background(), withOptions(d.spec("slow"), Options{Restart: options.RestartPolicy{Name: options.RestartAlways}}))
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- d.sup.Start(context.Background(), v.Record.ID) }()
	d.waitFor("slow", "starting", func(v *View) bool { return v.Record.Status == state.StatusStarting })
	stopped := make(chan error, 1)
	go func() { stopped <- d.sup.Stop(context.Background(), "slow", time.Second) }()
	time.Sleep(50 * time.Millisecond)
	close(release)
	if err := <-started; err != nil {
		t.Errorf("Start: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Stop: %v", err)
	}
	got := d.waitFor("slow", "stopped", func(v *View) bool { return v.Record.Status == state.StatusExited })
	if got.Record.Desired != state.DesiredStopped || b.Machine(v.Record.ID) != nil {
		t.Errorf("record %+v, machine %v", got.Record, b.Machine(v.Record.ID))
	}
	time.Sleep(Backoff(0) + 100*time.Millisecond)
	if n := b.Starts(v.Record.ID); n != 1 {
		t.Errorf("started %d times, want 1", n)
	}
}

// A volume named by a VM being created cannot be removed, and the removal
// says so at once instead of waiting for the creation's slow work; once
// the VM exists, it is its user.
func TestFakeVolumeReservedDuringCreate(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		if _, err := exec.LookPath("/usr/sbin/mkfs.ext4"); err != nil {
			t.Skip("mkfs.ext4 not found")
		}
	}
	d := newFakeDaemon(t, &vmmtest.Backend{})
	if _, err := d.sup.CreateVolume(context.Background(), "data", 0, nil); err != nil {
		t.Fatal(err)
	}
	release := d.sup.reserveVolumes("maker", []string{"data"})
	err := d.sup.RemoveVolume(context.Background(), "data")
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "maker") {
		t.Errorf("removing a volume a creation reserved: %v, want a conflict naming the VM", err)
	}
	release()
	s := d.spec("user")
	s.Mounts = []options.Mount{{Type: options.MountVolume, Source: "data", Target: "/data"}}
	v, _, err := d.sup.Create(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.sup.RemoveVolume(context.Background(), "data"); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("removing a volume a VM names: %v, want a conflict", err)
	}
	if err := d.sup.Remove(context.Background(), v.Record.ID, RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := d.sup.RemoveVolume(context.Background(), "data"); err != nil {
		t.Errorf("removing a volume no VM names: %v", err)
	}
}

// A VM's spec is stored once, in its vm.json, its options in its request:
// the store's record holds neither, and a daemon that adopts the VM takes
// the spec from its directory. A record an older kiln wrote, with the
// options in it (and, older still, the spec), still gives the VM its
// options, and names what a VM with a broken directory was.
func TestSpecIsStoredOnceInTheVMDirectory(t *testing.T) {
	b := &vmmtest.Backend{}
	d := newFakeDaemon(t, b)
	s := d.spec("once")
	s.Env = []string{"WHERE=vm.json"}
	v, _, err := d.sup.Create(context.Background(), withOptions(s, Options{StopGrace: 3 * time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := d.db.GetVM(context.Background(), v.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	var stored map[string]json.RawMessage
	if err := json.Unmarshal(rec.Spec, &stored); err != nil {
		t.Fatalf("record %s: %v", rec.Spec, err)
	}
	if len(stored) != 0 {
		t.Errorf("record %s: want neither spec nor options (vm.json holds both)", rec.Spec)
	}
	d.close()
	d.open()
	got, err := d.sup.Get(context.Background(), "once")
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.Program != s.Program || !slices.Equal(got.Spec.Env, s.Env) || got.Options.StopGrace != 3*time.Second || got.Spec.StopTimeout != 3 {
		t.Errorf("adopted spec %+v, options %+v; want the program and env created with, stop grace 3s", got.Spec, got.Options)
	}

	// An older record held the options (and an older one still the spec,
	// in its own form): they serve, the spec only when vm.json is gone.
	d.close()
	setRecord := func(r map[string]any) {
		t.Helper()
		old, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		// The store writes a record's spec only when the VM is inserted,
		// so the older record is written as an older kiln left it.
		db, err := sql.Open("sqlite", "file:"+filepath.Join(d.root, "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.Exec(`UPDATE vms SET spec=? WHERE id=?`, old, rec.ID); err != nil {
			t.Fatal(err)
		}
	}
	setRecord(map[string]any{"options": Options{StopGrace: 7 * time.Second, AutoRemove: true}})
	d.open()
	got, err = d.sup.Get(context.Background(), "once")
	if err != nil {
		t.Fatal(err)
	}
	if got.Options.StopGrace != 7*time.Second || !got.Options.AutoRemove || got.Spec.StopTimeout != 7 || !got.Spec.AutoRemove || got.Spec.Program != s.Program {
		t.Errorf("VM with an older record: spec %+v, options %+v; want the record's options in the spec", got.Spec, got.Options)
	}
	d.close()
	setRecord(map[string]any{
		"spec":    map[string]any{"name": "once", "program": s.Program, "bootTimeout": 5 * time.Second, "rlimits": []map[string]any{{"name": "nofile", "soft": 8, "hard": 9}}},
		"options": Options{StopGrace: 3 * time.Second},
	})
	if err := os.Remove(filepath.Join(d.rt.VMDir(v.Record.ID), "vm.json")); err != nil {
		t.Fatal(err)
	}
	d.open()
	got, err = d.sup.Get(context.Background(), "once")
	if err != nil {
		t.Fatal(err)
	}
	if got.Record.Status != state.StatusDead || got.Spec.Program != s.Program || got.Spec.BootTimeout != api.Duration(5*time.Second) ||
		len(got.Spec.Ulimits) != 1 || got.Spec.Ulimits[0].Hard != 9 || got.Options.StopGrace != 3*time.Second {
		t.Errorf("VM without vm.json: status %s, spec %+v; want dead, with the older record's spec", got.Record.Status, got.Spec)
	}
}

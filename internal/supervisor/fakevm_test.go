package supervisor

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/testenv"
	"kiln.dev/kiln/internal/vm"
	"kiln.dev/kiln/internal/vmm/vmmtest"
)

// fakeDaemon is a supervisor over a fake backend, as the daemon makes
// one: a kiln root, its store, a VM factory and a supervisor. No QEMU runs:
// the backend plays each VM's guest by its script.
type fakeDaemon struct {
	t    *testing.T
	root string
	b    *vmmtest.Backend
	db   *state.Store
	rt   *vm.Factory
	sup  *Supervisor
	// kernel and prog are stand-ins the fake never boots.
	kernel, prog string
}

func newFakeDaemon(t *testing.T, b *vmmtest.Backend) *fakeDaemon {
	t.Helper()
	root := t.TempDir()
	files := t.TempDir()
	d := &fakeDaemon{t: t, root: root, b: b,
		kernel: filepath.Join(files, "vmlinux"), prog: filepath.Join(files, "prog")}
	for p, b := range map[string][]byte{
		d.kernel: []byte("not a kernel"), d.prog: testenv.TinyELF(t, 4096, false),
		filepath.Join(files, "kiln-init"): []byte("not kiln-init"),
	} {
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d.open()
	t.Cleanup(func() {
		if d.sup != nil {
			d.close()
		}
	})
	return d
}

// open starts the daemon on the root: store, VM factory, supervisor,
// reconcile.
func (d *fakeDaemon) open() {
	d.t.Helper()
	db, err := state.Open(filepath.Join(d.root, "state.db"))
	if err != nil {
		d.t.Fatal(err)
	}
	rt, err := vm.New(d.root, vm.WithBackend(d.b), vm.WithoutJail(),
		vm.WithInit(filepath.Join(filepath.Dir(d.prog), "kiln-init")))
	if err != nil {
		d.t.Fatal(err)
	}
	d.db, d.rt = db, rt
	d.sup = New(rt, db, slog.New(slog.DiscardHandler))
	if err := d.sup.Reconcile(context.Background()); err != nil {
		d.t.Fatal(err)
	}
}

// close stops the daemon as it shuts down: supervisor, then store. The
// fake VMs run on.
func (d *fakeDaemon) close() {
	d.sup.Close()
	d.db.Close()
	d.sup = nil
}

// spec is a VM spec the fake can run.
func (d *fakeDaemon) spec(name string) vm.Spec {
	return vm.Spec{VMConfig: api.VMConfig{Name: name, Program: d.prog, Kernel: d.kernel, Unconfined: true, MemoryMiB: 64, BootTimeout: api.Duration(5 * time.Second)}}
}

// withOptions is s with o in its request.
func withOptions(s vm.Spec, o Options) vm.Spec {
	o.setIn(&s.VMConfig)
	return s
}

// run creates and starts a VM.
func (d *fakeDaemon) run(s vm.Spec, o Options) *View {
	d.t.Helper()
	v, _, err := d.sup.Create(context.Background(), withOptions(s, o))
	if err != nil {
		d.t.Fatalf("create: %v", err)
	}
	if err := d.sup.Start(context.Background(), v.Record.ID); err != nil {
		d.t.Fatalf("start: %v", err)
	}
	return v
}

// waitFor polls the VM's record until ok, failing after a deadline.
func (d *fakeDaemon) waitFor(ref, what string, ok func(*View) bool) *View {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := d.sup.Get(context.Background(), ref)
		if err == nil && ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			if v != nil {
				d.t.Fatalf("VM %s: waiting for %s: record %+v (err %v)", ref, what, v.Record, err)
			}
			d.t.Fatalf("VM %s: waiting for %s: %v", ref, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countGoroutines is how many goroutines run, once the ones that are
// ending have had a moment to.
func countGoroutines() int {
	time.Sleep(20 * time.Millisecond)
	return runtime.NumGoroutine()
}

// waitGoroutines fails the test unless the goroutines come back down to
// want (with a small tolerance for the runtime's own) within a few
// seconds, and shows the ones left.
func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= want+1 {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines, want at most %d:\n%s", n, want+1, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

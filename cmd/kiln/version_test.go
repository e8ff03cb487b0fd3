package main

import (
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestVersionShowsBothBuildsAndWarnsWhenTheyDiffer: kiln version starts
// no daemon and says none runs; with one, both sides show the same build;
// a daemon of another build (the same binary with another Go build ID) is
// warned about by version and by every command.
func TestVersionShowsBothBuildsAndWarnsWhenTheyDiffer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.kiln("version")
	if r.code != 125 || !strings.Contains(r.stdout, "Client:\n") || !strings.Contains(r.stdout, "(none running") ||
		!strings.Contains(r.stderr, "no daemon runs for "+e.root) {
		t.Fatalf("version without a daemon:\n%s", r)
	}
	if pid := e.daemonPID(); pid != 0 {
		t.Fatalf("version started a daemon (pid %d)", pid)
	}

	if r := e.kiln("ps"); r.code != 0 {
		t.Fatalf("ps:\n%s", r)
	}
	r = e.kiln("version", "--format", "json")
	var v versionInfo
	if err := json.Unmarshal([]byte(r.stdout), &v); r.code != 0 || err != nil {
		t.Fatalf("version --format json: %v\n%s", err, r)
	}
	if v.Server == nil || v.Client.BuildID == "" || v.Server.BuildID != v.Client.BuildID ||
		!strings.HasPrefix(v.Server.Monitor, "QEMU emulator version") || v.Server.Version != "v1" {
		t.Errorf("version: want one build on both sides and QEMU's version:\n%s", r.stdout)
	}
	if strings.Contains(r.stderr, "warning") {
		t.Errorf("same builds, yet a warning:\n%s", r.stderr)
	}
	if r := e.kiln("version", "--format", "yaml"); r.code != 125 || !strings.Contains(r.stderr, `invalid --format "yaml": use json`) {
		t.Errorf("version --format yaml:\n%s", r)
	}

	// Another build of the daemon: kiln's binary with its build ID changed.
	e.stopDaemon()
	b, err := os.ReadFile(filepath.Join(binDir, "kiln"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(filepath.Join(binDir, "kiln"))
	if err != nil {
		t.Fatal(err)
	}
	sec := f.Section(".note.go.buildid")
	f.Close()
	if sec == nil {
		t.Fatal("kiln has no Go build ID note")
	}
	b[sec.Offset+sec.Size-1] ^= 1
	other := filepath.Join(t.TempDir(), "kiln")
	if err := os.WriteFile(other, b, 0o755); err != nil {
		t.Fatal(err)
	}
	d := exec.Command(other, "--root", e.root, "daemon")
	d.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Kill(); d.Wait() })
	for deadline := time.Now().Add(30 * time.Second); e.daemonPID() != d.Process.Pid; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the other build's daemon did not start")
		}
	}
	for _, args := range [][]string{{"ps"}, {"version"}} {
		r := e.kiln(args...)
		if r.code != 0 || !strings.Contains(r.stderr, "kiln: warning: the daemon for "+e.root) || !strings.Contains(r.stderr, "this kiln is build "+v.Client.BuildID) {
			t.Errorf("kiln %v against another build's daemon: want a warning naming both builds:\n%s", args, r)
		}
	}
}

package main

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestUpdate: kiln update changes the restart policy at once and the
// memory and CPUs from the next start (the guest sees them then), keeps
// them across a daemon restart, and refuses bad values changing nothing.
func TestUpdate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.loadImage("kiln-test/box:upd", dockerTestImage(t))
	ok(t, "run -d", e.run("-d", "--name", "u", "--pull", "never", "--memory", "128m", "kiln-test/box:upd",
		"sh", "-c", "grep MemTotal /proc/meminfo; echo cpus $(grep -c ^processor /proc/cpuinfo); echo up; exec sleep 100000"))
	t.Cleanup(func() { e.kiln("rm", "-f", "u") })
	e.awaitLog("u", "up", 1)

	r := ok(t, "update", e.kiln("update", "--restart", "on-failure:2", "-m", "192m", "--cpus", "2", "u"))
	if !strings.Contains(r.stderr, "apply from its next start") {
		t.Errorf("update of a running VM: no warning that memory and CPUs wait for the next start:\n%s", r)
	}
	inspect := func() string {
		return strings.TrimSpace(ok(t, "inspect", e.kiln("inspect", "--format", "{{.Config.Restart.Name}}:{{.Config.Restart.MaxRetries}} {{.Config.MemoryMiB}} {{.Config.CPUs}}", "u")).stdout)
	}
	if got := inspect(); got != "on-failure:2 192 2" {
		t.Errorf("after update: %q", got)
	}
	// Bad values change nothing.
	for _, args := range [][]string{
		{"update", "-m", "1m", "u"},
		{"update", "--cpus", "9999", "u"},
		{"update", "--restart", "sometimes", "u"},
		{"update", "u"},
		{"update", "--restart", "no", "nosuch"},
	} {
		if r := e.kiln(args...); r.code != 125 || !strings.HasPrefix(r.stderr, "kiln: ") {
			t.Errorf("kiln %v: want exit 125 and a message:\n%s", args, r)
		}
	}
	if got := inspect(); got != "on-failure:2 192 2" {
		t.Errorf("after the refused updates: %q", got)
	}
	// Kept by a new daemon; the guest has them from its next start.
	e.stopDaemon()
	if got := inspect(); got != "on-failure:2 192 2" {
		t.Errorf("after a daemon restart: %q", got)
	}
	ok(t, "restart", e.kiln("restart", "-t", "1", "u"))
	e.awaitLog("u", "up", 2)
	logs := ok(t, "logs", e.kiln("logs", "u")).stdout
	if !strings.Contains(logs, "cpus 2") {
		t.Errorf("the guest after the restart does not have 2 CPUs:\n%s", logs)
	}
	m := regexp.MustCompile(`MemTotal:\s+(\d+) kB\s+cpus 2`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no MemTotal before cpus 2 in the logs:\n%s", logs)
	}
	if kb, _ := strconv.Atoi(m[1]); kb < 150<<10 || kb > 192<<10 {
		t.Errorf("the guest's memory after the restart: %s kB, want about 192 MiB", m[1])
	}
}

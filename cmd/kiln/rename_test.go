package main

import (
	"strings"
	"testing"
)

// TestRename: a running VM renamed answers to its new name only, keeps
// running and its logs, keeps the name across a daemon restart, and the
// rename is an event; a name in use, a bad name or an unknown VM are
// refused.
func TestRename(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.runD("--name", "before", e.hello(), "-sleep", "5m")
	e.awaitLog("before", "hello from before", 1)
	e.runD("--name", "taken", e.hello(), "-sleep", "5m")
	if r := e.kiln("rename", "before", "after"); r.code != 0 {
		t.Fatalf("rename:\n%s", r)
	}
	if got := e.inspect("after", "{{.Name}} {{.State.Status}}"); got != "after running" {
		t.Errorf("after the rename: %q, want after running", got)
	}
	if r := e.kiln("inspect", "before"); r.code != 125 || !strings.Contains(r.stderr, "before") {
		t.Errorf("the old name still answers:\n%s", r)
	}
	if r := e.kiln("logs", "after"); !strings.Contains(r.stdout, "hello from before") {
		t.Errorf("the renamed VM's logs (its guest keeps its hostname):\n%s", r)
	}
	if r := e.kiln("events", "--until", "0s"); !strings.Contains(r.stdout, "rename") || !strings.Contains(r.stdout, "oldName=before") {
		t.Errorf("no rename event:\n%s", r)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"rename", "after", "taken"}, `the name "taken" is already in use`},
		{[]string{"rename", "after", "bad/name"}, "bad/name"},
		{[]string{"rename", "no-such-vm", "x"}, "no-such-vm"},
		{[]string{"rename", "after"}, "accepts 2 arg"},
	} {
		if r := e.kiln(c.args...); r.code != 125 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("kiln %v: want exit 125 and %q:\n%s", c.args, c.want, r)
		}
	}
	e.stopDaemon()
	if got := e.inspect("after", "{{.Name}} {{.State.Status}}"); got != "after running" {
		t.Errorf("after a daemon restart: %q, want after running", got)
	}
	if r := e.kiln("rm", "-f", "after", "taken"); r.code != 0 {
		t.Fatalf("rm -f:\n%s", r)
	}
}

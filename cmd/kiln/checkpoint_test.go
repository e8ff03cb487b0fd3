package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// counterSource is a program whose state lives only in its memory: it
// prints an increasing count every 200 ms; with -now it prints the
// guest's clock (Unix seconds) and exits.
const counterSource = `package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-now" {
		fmt.Println(time.Now().Unix())
		return
	}
	for n := 0; ; n++ {
		fmt.Printf("count %d\n", n)
		time.Sleep(200 * time.Millisecond)
	}
}
`

var (
	counterOnce sync.Once
	counterErr  error
)

// counter returns the path of the counter program, built once (static).
func counter(t *testing.T) string {
	t.Helper()
	p := filepath.Join(binDir, "counter")
	counterOnce.Do(func() {
		src, err := os.MkdirTemp("", "kiln-counter-")
		if err != nil {
			counterErr = err
			return
		}
		defer os.RemoveAll(src)
		if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module counter\n\ngo 1.21\n"), 0o644); err != nil {
			counterErr = err
			return
		}
		if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(counterSource), 0o644); err != nil {
			counterErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", p, ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			counterErr = fmt.Errorf("building the counter: %v\n%s", err, out)
		}
	})
	if counterErr != nil {
		t.Fatal(counterErr)
	}
	return p
}

var countRE = regexp.MustCompile(`(?m)^count (\d+)$`)

// counts returns the counts in the VM's logs, in order.
func (e *env) counts(name string) []int {
	e.t.Helper()
	r := e.kiln("logs", name)
	if r.code != 0 {
		e.t.Fatalf("logs %s:\n%s", name, r)
	}
	var out []int
	for _, m := range countRE.FindAllStringSubmatch(r.stdout, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

// checkpoints lists the entries of the VM's checkpoints directory.
func (e *env) checkpointDirs(id string) []string {
	ents, _ := os.ReadDir(filepath.Join(e.root, "vms", id, "checkpoints"))
	var out []string
	for _, d := range ents {
		out = append(out, d.Name())
	}
	return out
}

func TestCheckpointAndRestoreKeepsTheProgramsMemory(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// --restart always: a checkpoint ends the VM as a stop does, which the
	// policy leaves stopped.
	id := e.runD("--name", "web", "--memory", "128m", "--restart", "always", counter(t))
	e.awaitLog("web", "count 10", 1)

	if r := e.kiln("checkpoint", "create", "web", "cp1"); r.code != 0 || strings.TrimSpace(r.stdout) != "cp1" {
		t.Fatalf("checkpoint create:\n%s", r)
	}
	saved := time.Now()
	if got := e.inspect("web", "{{.State.Status}} {{.State.ExitCode}}"); got != "exited 0" {
		t.Fatalf("after checkpoint create the VM is %q, want it exited 0", got)
	}
	if pids := qemuUnder(e.root); len(pids) > 0 {
		t.Fatalf("QEMU still runs after checkpoint create: %v", pids)
	}
	before := e.counts("web")
	if len(before) < 10 {
		t.Fatalf("only %d counts before the checkpoint", len(before))
	}
	last := before[len(before)-1]
	if r := e.kiln("checkpoint", "ls", "web"); r.code != 0 || !regexp.MustCompile(`(?m)^cp1\s`).MatchString(r.stdout) {
		t.Fatalf("checkpoint ls:\n%s", r)
	}

	// The guest's clock stands still while it is saved: wait, so that a
	// clock not set on restore would lag by this much.
	time.Sleep(8*time.Second - time.Since(saved))
	if got := e.inspect("web", "{{.State.Status}} {{.State.RestartCount}}"); got != "exited 0" {
		t.Fatalf("8 s after checkpoint create the VM is %q, want it left exited by its restart policy", got)
	}
	start := time.Now()
	if r := e.kiln("start", "--checkpoint", "cp1", "web"); r.code != 0 {
		t.Fatalf("start --checkpoint:\n%s", r)
	}
	t.Logf("restore to running: %v", time.Since(start))
	e.awaitLog("web", fmt.Sprintf("count %d", last+5), 1)
	after := e.counts("web")
	for i := 1; i < len(after); i++ {
		if after[i] != after[i-1]+1 {
			t.Fatalf("the count did not go on where it was: ... %v (saved at %d)", after[max(0, i-3):min(len(after), i+3)], last)
		}
	}
	r := e.kiln("exec", "web", "/usr/local/bin/counter", "-now")
	if r.code != 0 {
		t.Fatalf("exec:\n%s", r)
	}
	guest, err := strconv.ParseInt(strings.TrimSpace(r.stdout), 10, 64)
	if err != nil {
		t.Fatalf("guest clock: %q", r.stdout)
	}
	if d := time.Now().Unix() - guest; d > 3 || d < -3 {
		t.Fatalf("after restore the guest's clock is %d s off the host's", d)
	}

	// The checkpoint stays for another restore until removed.
	if r := e.kiln("checkpoint", "rm", "web", "cp1"); r.code != 0 {
		t.Fatalf("checkpoint rm:\n%s", r)
	}
	if r := e.kiln("checkpoint", "ls", "-q", "web"); r.code != 0 || r.stdout != "" {
		t.Fatalf("checkpoint ls after rm:\n%s", r)
	}
	if got := e.checkpointDirs(id); len(got) != 0 {
		t.Fatalf("checkpoints directory after rm: %v", got)
	}
	if r := e.kiln("rm", "-f", "web"); r.code != 0 {
		t.Fatalf("rm -f:\n%s", r)
	}
	if got := e.vmDirs(); len(got) != 0 {
		t.Fatalf("VM directories left after rm -f: %v", got)
	}
}

func TestCheckpointRefusesBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	share := t.TempDir()
	id := e.runD("--name", "web", "--memory", "128m", counter(t))
	shared := e.runD("--name", "shared", "--memory", "128m", "-v", share+":/data", counter(t))
	vol := e.runD("--name", "vol", "--memory", "128m", "-v", "data:/data", counter(t))
	if r := e.run("--name", "done", e.hello()); r.code != 0 {
		t.Fatalf("run:\n%s", r)
	}
	e.awaitLog("web", "count 3", 1)
	if r := e.kiln("checkpoint", "create", "--leave-running", "web", "cp1"); r.code != 0 {
		t.Fatalf("checkpoint create --leave-running:\n%s", r)
	}
	if got := e.inspect("web", "{{.State.Status}}"); got != "running" {
		t.Fatalf("after checkpoint create --leave-running the VM is %s", got)
	}
	e.awaitLog("web", "count 20", 1) // it runs on
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"checkpoint", "create", "web", "bad/name"}, []string{`"bad/name"`, "letters, digits"}},
		{[]string{"checkpoint", "create", "web", "cp1"}, []string{`"cp1"`, "already has"}},
		{[]string{"checkpoint", "create", "done", "cp2"}, []string{"done", "not running"}},
		{[]string{"checkpoint", "create", "nosuch", "cp2"}, []string{"nosuch"}},
		{[]string{"checkpoint", "create", "shared", "cp2"}, []string{share, "host directory"}},
		{[]string{"checkpoint", "create", "vol", "cp2"}, []string{"volume data", "changes after a checkpoint"}},
		{[]string{"start", "--checkpoint", "nope", "done"}, []string{`"nope"`, "no checkpoint"}},
		{[]string{"start", "--checkpoint", "a b", "done"}, []string{`"a b"`, "letters, digits"}},
		{[]string{"start", "--checkpoint", "cp1", "web"}, []string{"running", `"cp1"`}},
		{[]string{"checkpoint", "rm", "web", "nope"}, []string{`"nope"`}},
	} {
		r := e.kiln(c.args...)
		if r.code != 125 {
			t.Errorf("kiln %v: exit %d, want 125:\n%s", c.args, r.code, r)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("kiln %v: the message does not name %q:\n%s", c.args, w, r.stderr)
			}
		}
	}
	if got := e.checkpointDirs(id); len(got) != 1 || got[0] != "cp1" {
		t.Errorf("checkpoints of web: %v, want only cp1", got)
	}
	for _, v := range []string{shared, vol} {
		if got := e.checkpointDirs(v); len(got) != 0 {
			t.Errorf("a refused checkpoint left %v", got)
		}
	}
	for _, v := range []string{"shared", "vol"} {
		if got := e.inspect(v, "{{.State.Status}}"); got != "running" {
			t.Errorf("a refused checkpoint left VM %s %s", v, got)
		}
	}
	if r := e.kiln("rm", "-f", "web", "shared", "vol", "done"); r.code != 0 {
		t.Fatalf("rm -f:\n%s", r)
	}
	if got := e.vmDirs(); len(got) != 0 {
		t.Fatalf("VM directories left after rm -f: %v", got)
	}
}

// A full-mode image VM has a writable disk of its own: the checkpoint
// keeps a copy of it as the guest left it, and a restore puts that copy
// back, whatever a cold run wrote there in between.
func TestCheckpointRestoresTheVMsOwnDisk(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ref := e.loadDebianWithApp()
	loop := `n=0; while :; do echo count $n; echo $n > /root/state; n=$((n+1)); sleep 0.2; done`
	id := e.runD("--name", "deb", "--memory", "256m", "--pull", "never", ref, "/bin/sh", "-c", loop)
	e.awaitLog("deb", "count 5", 1)
	if r := e.kiln("checkpoint", "create", "deb", "cp1"); r.code != 0 {
		t.Fatalf("checkpoint create:\n%s", r)
	}
	if _, err := os.Stat(filepath.Join(e.root, "vms", id, "checkpoints", "cp1", "disk-disk")); err != nil {
		t.Fatalf("the checkpoint has no copy of the VM's disk: %v", err)
	}
	saved := e.counts("deb")
	last := saved[len(saved)-1]

	// A cold run in between changes the disk.
	if r := e.kiln("start", "deb"); r.code != 0 {
		t.Fatalf("start:\n%s", r)
	}
	e.awaitLog("deb", "count 0", 2) // the cold run's program started
	if r := e.kiln("exec", "deb", "/bin/sh", "-c", "touch /root/cold && sync"); r.code != 0 {
		t.Fatalf("exec touch:\n%s", r)
	}
	if r := e.kiln("stop", "-t", "1", "deb"); r.code != 0 {
		t.Fatalf("stop:\n%s", r)
	}

	if r := e.kiln("start", "--checkpoint", "cp1", "deb"); r.code != 0 {
		t.Fatalf("start --checkpoint:\n%s", r)
	}
	e.awaitLog("deb", fmt.Sprintf("count %d", last+3), 1)
	r := e.kiln("exec", "deb", "/bin/sh", "-c", "test -e /root/cold && echo cold run seen || echo as saved; cat /root/state")
	if r.code != 0 {
		t.Fatalf("exec:\n%s", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || lines[0] != "as saved" {
		t.Fatalf("after the restore the disk is not the checkpoint's: %q", r.stdout)
	}
	if n, err := strconv.Atoi(lines[1]); err != nil || n <= last {
		t.Fatalf("/root/state holds %q, want a count past %d", lines[1], last)
	}
	if r := e.kiln("rm", "-f", "deb"); r.code != 0 {
		t.Fatalf("rm -f:\n%s", r)
	}
	if got := e.vmDirs(); len(got) != 0 {
		t.Fatalf("VM directories left after rm -f: %v", got)
	}
}

// A bridge VM's QEMU inherits its TAP as well as the saved state: after a
// restore it answers on its address and published port as before.
func TestCheckpointOfABridgeVM(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	okr(t, "network create", e.kiln("network", "create", "n", "--subnet", "10.98.0.0/24"))
	e.runD("--name", "b", "--network", "n", "-p", "127.0.0.1:18098:80", httpd(t))
	e.awaitLog("b", "serving HTTP", 1)
	okr(t, "checkpoint create", e.kiln("checkpoint", "create", "b", "cp1"))
	if _, err := e.helper("get", "http://127.0.0.1:18098/"); err == nil {
		t.Fatal("a checkpointed VM still answers")
	}
	okr(t, "start --checkpoint", e.kiln("start", "--checkpoint", "cp1", "b"))
	if body, err := e.helper("get", "http://127.0.0.1:18098/"); err != nil || body != "hello from kiln VM b\n" {
		t.Errorf("GET b after its restore = %q, %v", body, err)
	}
	okr(t, "rm -f", e.kiln("rm", "-f", "b"))
}

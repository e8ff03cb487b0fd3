package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln.dev/kiln/api"
)

// awaitLog follows the VM's logs until a line containing text has appeared
// n times (the stream tells; nothing polls).
func (e *env) awaitLog(name, text string, n int) {
	e.t.Helper()
	if err := e.awaitLogErr(name, text, n); err != nil {
		e.t.Fatal(err)
	}
}

// awaitLogErr is awaitLog for a goroutine other than the test's own: it
// returns what went wrong instead of ending the test.
func (e *env) awaitLogErr(name, text string, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.command(ctx, "logs", "-f", name)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	seen := 0
	for sc.Scan() {
		if strings.Contains(sc.Text(), text) {
			if seen++; seen >= n {
				return nil
			}
		}
	}
	return fmt.Errorf("logs of %s ended after %d of %d lines with %q", name, seen, n, text)
}

// awaitEvents reads all events (past, then live) until the VM has had n of
// the action.
func (e *env) awaitEvents(name, action string, n int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.command(ctx, "events", "--since", "0", "--format", "json")
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	dec := json.NewDecoder(out)
	seen := 0
	for {
		var ev api.Event
		if err := dec.Decode(&ev); err != nil {
			e.t.Fatalf("events ended after %d %q events of %s (want %d): %v", seen, action, name, n, err)
		}
		if ev.Name == name && ev.Action == action {
			if seen++; seen >= n {
				return
			}
		}
	}
}

func (e *env) inspect(name, format string) string {
	e.t.Helper()
	r := e.kiln("inspect", "--format", format, name)
	if r.code != 0 {
		e.t.Fatalf("inspect %s:\n%s", name, r)
	}
	return strings.TrimSpace(r.stdout)
}

// runD starts a detached VM and returns its ID.
func (e *env) runD(args ...string) string {
	e.t.Helper()
	r := e.kiln(append([]string{"run", "-d", "--kernel", e.kernel}, args...)...)
	if r.code != 0 || !regexp.MustCompile(`^[0-9a-f]{64}\n$`).MatchString(r.stdout) {
		e.t.Fatalf("run -d %v:\n%s", args, r)
	}
	return strings.TrimSpace(r.stdout)
}

func TestDetachedVMLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id := e.runD("--name", "web", "-e", "K=V", "--memory", "128m", e.hello(), "-sleep", "10m", "-env", "K")
	e.awaitLog("web", "sleeping", 1)

	r := e.kiln("ps")
	if !regexp.MustCompile(`(?m)^` + id[:12] + `\s+web\s+\S*/hello\s+"hello -sleep 10m -env K"\s+.*\s+Up `).MatchString(r.stdout) {
		t.Errorf("ps does not show web up:\n%s", r)
	}
	if got := e.inspect(id[:8], "{{.Name}} {{.State.Status}} {{.State.Running}} {{.Config.MemoryMiB}}"); got != "web running true 128" {
		t.Errorf("inspect by ID prefix = %q", got)
	}
	if r := e.kiln("logs", "web"); !strings.Contains(r.stdout, "K=V") || !strings.Contains(r.stderr, "this line went to stderr") {
		t.Errorf("logs do not keep stdout and stderr apart:\n%s", r)
	}
	if r := e.kiln("logs", "-t", "--tail", "1", "web"); !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\S+ sleeping\n$`).MatchString(r.stdout) {
		t.Errorf("logs -t --tail 1:\n%s", r)
	}
	if r := e.kiln("rm", "web"); r.code != 125 || !strings.Contains(r.stderr, "is running: stop it first") {
		t.Errorf("rm of a running VM must be refused:\n%s", r)
	}
	if r := e.kiln("stop", "-t", "20", "web"); r.code != 0 {
		t.Fatalf("stop:\n%s", r)
	}
	if got := e.inspect("web", "{{.State.Status}} {{.State.ExitCode}} {{.Desired}}"); got != "exited 0 stopped" {
		t.Errorf("after stop: %q, want the program's own exit 0 after SIGTERM", got)
	}
	if r := e.kiln("logs", "web"); !strings.Contains(r.stdout, "got terminated") {
		t.Errorf("the program did not get SIGTERM on stop:\n%s", r)
	}
	if r := e.kiln("ps", "-q"); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("ps without -a lists a stopped VM:\n%s", r)
	}
	if r := e.kiln("ps", "-a", "--filter", "state=exited", "--format", "{{.Name}} {{.State}}"); strings.TrimSpace(r.stdout) != "web exited" {
		t.Errorf("ps --filter state=exited:\n%s", r)
	}

	if r := e.kiln("start", "web"); r.code != 0 {
		t.Fatalf("start:\n%s", r)
	}
	e.awaitLog("web", "sleeping", 2)
	if r := e.kiln("restart", "-t", "20", "web"); r.code != 0 {
		t.Fatalf("restart:\n%s", r)
	}
	e.awaitLog("web", "sleeping", 3)
	if got := e.inspect("web", "{{.State.Status}} {{.State.RestartCount}}"); got != "running 1" {
		t.Errorf("after restart: %q", got)
	}
	if r := e.kiln("kill", "-s", "TERM", "web"); r.code != 0 {
		t.Fatalf("kill -s TERM:\n%s", r)
	}
	if r := e.kiln("wait", "web"); strings.TrimSpace(r.stdout) != "0" {
		t.Errorf("wait after kill -s TERM:\n%s", r)
	}
	if r := e.kiln("kill", "-s", "NOPE", "web"); r.code != 125 || !strings.Contains(r.stderr, `invalid signal "NOPE"`) {
		t.Errorf("kill with a bad signal:\n%s", r)
	}
	if r := e.kiln("rm", "web"); r.code != 0 {
		t.Fatalf("rm:\n%s", r)
	}
	if r := e.kiln("inspect", "web"); r.code != 125 || !strings.Contains(r.stderr, "no such VM: web") {
		t.Errorf("inspect after rm:\n%s", r)
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("rm left VM directories: %v", d)
	}
	r = e.kiln("events", "--since", "0", "--until", "0s")
	var actions []string
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if f := strings.Fields(l); len(f) > 3 {
			actions = append(actions, f[2])
		}
	}
	want := "created started died stopped started died stopped restarted killed died removed"
	if got := strings.Join(actions, " "); got != want {
		t.Errorf("events = %q, want %q\n%s", got, want, r.stdout)
	}
}

func TestDaemonKilledVMsKeepRunningAndAreReattached(t *testing.T) {
	// Serial: it must see a VM end within a 12 s window while no daemon runs.
	e := newEnv(t)
	names := []string{"a", "b", "c"}
	pids := map[string]string{}
	for _, n := range names {
		e.runD("--name", n, e.hello(), "-sleep", "10m")
	}
	e.runD("--name", "quick", e.hello(), "-sleep", "12s", "-exit", "9")
	for _, n := range append(names, "quick") {
		e.awaitLog(n, "sleeping", 1)
		pids[n] = e.inspect(n, "{{.State.PID}}")
	}
	daemon := e.daemonPID()
	if err := syscall.Kill(daemon, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// quick's program ends while no daemon runs: its VM waits, holding
	// the exit status, until a daemon takes it (its status port has no one
	// to write to).
	if _, err := os.Stat("/proc/" + pids["quick"]); err != nil {
		t.Fatalf("quick ended before the daemon was killed: the test ran too slowly to see it end without one")
	}
	time.Sleep(15 * time.Second)
	if _, err := os.Stat("/proc/" + pids["quick"]); err != nil {
		t.Errorf("the VM whose program ended while no daemon ran did not wait to hand over its exit: %v", err)
	}
	for _, n := range names {
		if _, err := os.Stat("/proc/" + pids[n]); err != nil {
			t.Fatalf("VM %s died with the daemon", n)
		}
	}
	r := e.kiln("ps", "-a", "--format", "{{.Name}} {{.State}} {{.ExitCode}}")
	if e.daemonPID() == daemon || e.daemonPID() == 0 {
		t.Fatalf("no new daemon started:\n%s", r)
	}
	e.kiln("wait", "quick")
	r = e.kiln("ps", "-a", "--format", "{{.Name}} {{.State}} {{.ExitCode}}")
	for _, n := range names {
		if !strings.Contains(r.stdout, n+" running 0") {
			t.Errorf("%s not listed running after the daemon restart:\n%s", n, r)
		}
		if got := e.inspect(n, "{{.State.PID}}"); got != pids[n] {
			t.Errorf("%s: pid %s after reattach, want the same QEMU %s", n, got, pids[n])
		}
	}
	if !strings.Contains(r.stdout, "quick exited 9") {
		t.Errorf("the VM that ended meanwhile does not show its exit code 9:\n%s", r)
	}
	// The reattached VMs are supervised: stop works and reports the exit.
	if r := e.kiln("stop", "a"); r.code != 0 {
		t.Fatalf("stop after reattach:\n%s", r)
	}
	if got := e.inspect("a", "{{.State.Status}}"); got != "exited" {
		t.Errorf("a after stop: %s", got)
	}
	e.kiln("rm", "-f", "a", "b", "c", "quick")
}

// waitGone waits (bounded) for a process to be gone. The test has no
// handle on it: its parent was the killed daemon.
func waitGone(t *testing.T, pid string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile("/proc/" + pid + "/stat"); err != nil || strings.Contains(string(b), ") Z ") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("process %s still running", pid)
}

func TestRestartPolicies(t *testing.T) {
	// Serial: it counts on the restart backoff being over before a daemon restart.
	e := newEnv(t)
	t.Run("on-failure:2 stops after two restarts", func(t *testing.T) {
		e.t = t
		e.runD("--name", "flaky", "--restart", "on-failure:2", e.hello(), "-exit", "1")
		e.awaitEvents("flaky", "died", 3)
		e.kiln("wait", "flaky")
		if got := e.inspect("flaky", "{{.State.Status}} {{.State.RestartCount}} {{.State.ExitCode}}"); got != "exited 2 1" {
			t.Errorf("got %q, want exited after 2 restarts", got)
		}
	})
	t.Run("on-failure does not restart a success", func(t *testing.T) {
		e.t = t
		e.runD("--name", "ok", "--restart", "on-failure", e.hello())
		e.awaitEvents("ok", "died", 1)
		if got := e.inspect("ok", "{{.State.Status}} {{.State.RestartCount}}"); got != "exited 0" {
			t.Errorf("got %q", got)
		}
	})
	t.Run("always restarts until stopped, and stop is not undone", func(t *testing.T) {
		e.t = t
		e.runD("--name", "always", "--restart", "always", e.hello(), "-exit", "0")
		e.awaitEvents("always", "restarted", 2)
		if r := e.kiln("stop", "always"); r.code != 0 {
			t.Fatalf("stop:\n%s", r)
		}
		n := e.inspect("always", "{{.State.RestartCount}}")
		if got := e.inspect("always", "{{.State.Status}} {{.Desired}}"); got != "exited stopped" {
			t.Errorf("after stop: %q", got)
		}
		// The backoff is well under the daemon restart below; after it the
		// VM must still be stopped with the same count.
		e.stopDaemon()
		if got := e.inspect("always", "{{.State.RestartCount}}"); got != n {
			// a restart of the daemon brings always-VMs back, as dockerd does
			if got := e.inspect("always", "{{.State.Status}}"); got != "running" {
				t.Errorf("always VM after daemon restart: count %s (was %s), status %s", got, n, got)
			}
		}
	})
	t.Run("unless-stopped stays stopped across a daemon restart", func(t *testing.T) {
		e.t = t
		e.runD("--name", "us", "--restart", "unless-stopped", e.hello(), "-sleep", "10m")
		e.awaitLog("us", "sleeping", 1)
		e.kiln("stop", "-t", "20", "us")
		e.stopDaemon()
		if got := e.inspect("us", "{{.State.Status}} {{.Desired}}"); got != "exited stopped" {
			t.Errorf("unless-stopped VM after daemon restart: %q", got)
		}
	})
	t.Run("unless-stopped comes back after its daemon restarts", func(t *testing.T) {
		e.t = t
		e.runD("--name", "back", "--restart", "unless-stopped", e.hello(), "-sleep", "10m")
		e.awaitLog("back", "sleeping", 1)
		pid := e.inspect("back", "{{.State.PID}}")
		e.stopDaemon()
		syscall.Kill(atoi(pid), syscall.SIGKILL) // it dies while no daemon runs
		waitGone(t, pid)
		e.kiln("ps") // starts a daemon, which restarts it
		e.awaitLog("back", "sleeping", 2)
		if got := e.inspect("back", "{{.State.Status}} {{.State.RestartCount}}"); got != "running 1" {
			t.Errorf("got %q", got)
		}
	})
	e.t = t
	e.kiln("rm", "-f", "flaky", "ok", "always", "us", "back")
}

func atoi(s string) int {
	var n int
	fmt.Sscanf(s, "%d", &n)
	return n
}

func TestLogsRotateAndSurviveTheVM(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.runD("--name", "chatty", "--log-opt", "max-size=2k", "--log-opt", "max-file=2", e.hello(), "-lines", "200")
	e.kiln("wait", "chatty")
	dir := filepath.Join(e.root, "vms", e.inspect("chatty", "{{.ID}}"))
	for _, f := range []string{"vm.log", "vm.log.1"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("%s missing: %v", f, err)
		}
		if st.Size() > 2048 {
			t.Errorf("%s is %d bytes, over max-size 2k", f, st.Size())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "vm.log.2")); err == nil {
		t.Errorf("vm.log.2 exists: max-file=2 keeps two files")
	}
	r := e.kiln("logs", "chatty")
	if !strings.HasSuffix(r.stdout, "line 200 of 200\n") || strings.Contains(r.stdout, "line 1 of 200\n") {
		t.Errorf("logs after rotation should end with the last line and have dropped the first:\n%s", r.stdout)
	}
	e.stopDaemon()
	if r2 := e.kiln("logs", "chatty"); r2.stdout != r.stdout {
		t.Errorf("logs changed across a daemon restart")
	}
	if r := e.kiln("logs", "--console", "chatty"); !strings.Contains(r.stdout, "kiln-init: program exited with code 0") {
		t.Errorf("logs --console does not show the serial console:\n%s", r)
	}
}

// A request from another uid is refused by its peer credentials, even
// when the socket's permissions would let it connect.
func TestDaemonRefusesOtherUIDs(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid (setpriv)")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not found: apt-get install util-linux")
	}
	e := newEnv(t)
	e.kiln("ps") // start the daemon
	for _, p := range []string{binDir, filepath.Dir(e.root), e.root, filepath.Join(e.root, "run")} {
		os.Chmod(p, 0o755)
	}
	os.Chmod(filepath.Join(e.root, "run", "kiln.sock"), 0o666)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		filepath.Join(binDir, "kiln"), "--root", e.root, "ps")
	cmd.Env = append(os.Environ(), "KILN_NO_AUTOSTART=1")
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 125 || !strings.Contains(string(out), "uid 65534 may not use this kiln daemon") {
		t.Errorf("want the request refused for uid 65534, got exit %d:\n%s", cmd.ProcessState.ExitCode(), out)
	}
}

// rawRequest sends one HTTP request to the root's daemon socket.
func (e *env) rawRequest(method, path string, body io.Reader, header map[string]string) (int, string) {
	e.t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", "/proc/self/cwd/run/kiln.sock")
	}}}
	req, _ := http.NewRequest(method, "http://kiln"+path, body)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	wd, _ := os.Getwd()
	os.Chdir(e.root)
	defer os.Chdir(wd)
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestDaemonBadInput(t *testing.T) {
	// Serial: rawRequest changes the process's working directory.
	e := newEnv(t)
	e.runD("--name", "one", e.hello(), "-sleep", "10m")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown VM", []string{"stop", "nope"}, `no such VM: nope`},
		{"duplicate name", []string{"run", "-d", "--kernel", e.kernel, "--name", "one", e.hello()}, `the name "one" is already in use`},
		{"invalid name", []string{"run", "-d", "--kernel", e.kernel, "--name", "../x", e.hello()}, `invalid VM name "../x"`},
		{"long name", []string{"run", "-d", "--kernel", e.kernel, "--name", strings.Repeat("a", 200), e.hello()}, `invalid VM name "aaaa`},
		{"unknown restart policy", []string{"run", "-d", "--kernel", e.kernel, "--restart", "sometimes", e.hello()}, `invalid restart policy "sometimes"`},
		{"negative retries", []string{"run", "-d", "--kernel", e.kernel, "--restart", "on-failure:-1", e.hello()}, `invalid restart policy "on-failure:-1"`},
		{"--rm with --restart", []string{"run", "-d", "--rm", "--kernel", e.kernel, "--restart", "always", e.hello()}, `conflicting options: --rm and --restart always`},
		{"bad log option", []string{"run", "-d", "--kernel", e.kernel, "--log-opt", "max-size=tiny", e.hello()}, `invalid log option "max-size=tiny"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.kiln(c.args...)
			lines := errorLines(r.stderr)
			if r.code != 125 || len(lines) != 1 || !strings.Contains(lines[0], c.want) {
				t.Errorf("want exit 125 and one line with %q:\n%s", c.want, r)
			}
		})
	}
	if r := e.kiln("ps", "-a", "-q"); len(strings.Fields(r.stdout)) != 1 || len(e.vmDirs()) != 1 {
		t.Errorf("bad input created VMs:\n%s\ndirs: %v", r, e.vmDirs())
	}

	code, body := e.rawRequest("POST", "/v1/vms", strings.NewReader(`{"program": `), nil)
	if code != 400 || !strings.Contains(body, "malformed JSON") {
		t.Errorf("malformed JSON: %d %s", code, body)
	}
	code, body = e.rawRequest("POST", "/v1/vms", strings.NewReader(`{"program": "/x", "bogus": 1}`), nil)
	if code != 400 || !strings.Contains(body, `unknown field \"bogus\"`) {
		t.Errorf("unknown field: %d %s", code, body)
	}
	big := io.MultiReader(strings.NewReader(`{"program": "`), io.LimitReader(zeros{}, 100<<20), strings.NewReader(`"}`))
	code, body = e.rawRequest("POST", "/v1/vms", big, nil)
	if code != 400 || !strings.Contains(body, "request body is over") {
		t.Errorf("100 MB body: %d %s", code, body)
	}
	code, body = e.rawRequest("GET", "/v1/vms", nil, map[string]string{"Origin": "http://example.invalid"})
	if code != 403 || !strings.Contains(body, "Origin") {
		t.Errorf("Origin header: %d %s", code, body)
	}
	code, _ = e.rawRequest("GET", "/v1/nothing", nil, nil)
	if code != 404 {
		t.Errorf("unknown endpoint: %d", code)
	}
	e.kiln("rm", "-f", "one")
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}

func TestDaemonSurvivesBrokenState(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id := e.runD("--name", "gone", e.hello())
	e.kiln("wait", "gone")
	e.runD("--name", "alive", e.hello(), "-sleep", "10m")
	e.awaitLog("alive", "sleeping", 1)
	alivePID := e.inspect("alive", "{{.State.PID}}")
	aliveDir := filepath.Join(e.root, "vms", e.inspect("alive", "{{.ID}}"))
	e.stopDaemon()

	// A VM directory deleted behind the daemon's back, and a running VM's
	// pidfile corrupted.
	os.RemoveAll(filepath.Join(e.root, "vms", id))
	os.WriteFile(filepath.Join(aliveDir, "qemu.pid"), []byte("garbage\n"), 0o600)

	r := e.kiln("ps", "-a", "--format", "{{.Name}} {{.State}}")
	if !strings.Contains(r.stdout, "gone dead") || !strings.Contains(r.stdout, "alive running") {
		t.Errorf("after restart: want gone dead and alive running:\n%s", r)
	}
	if got := e.inspect("alive", "{{.State.PID}}"); got != alivePID {
		t.Errorf("alive reattached to pid %s, want %s (found despite the corrupt pidfile)", got, alivePID)
	}
	if r := e.kiln("start", "gone"); r.code != 125 || !strings.Contains(r.stderr, "directory is missing") {
		t.Errorf("start of a dead VM:\n%s", r)
	}
	if r := e.kiln("rm", "gone"); r.code != 0 {
		t.Errorf("rm of a dead VM:\n%s", r)
	}
	e.kiln("rm", "-f", "alive")
	if pids := qemuUnder(e.root); len(pids) != 0 {
		t.Errorf("QEMU left: %v", pids)
	}

	// A state database that is not a database: the daemon refuses to
	// start, says why, and leaves the file alone.
	e.stopDaemon()
	db := filepath.Join(e.root, "state.db")
	os.Remove(db + "-wal")
	os.Remove(db + "-shm")
	junk := []byte("this is not a database, but it is somebody's file\n")
	os.WriteFile(db, junk, 0o600)
	r = e.kiln("ps")
	if r.code != 125 || !strings.Contains(r.stderr, "is not a SQLite database") {
		t.Errorf("a junk state file: want a clear error:\n%s", r)
	}
	if b, _ := os.ReadFile(db); string(b) != string(junk) {
		t.Errorf("the junk state file was changed")
	}
}

// A daemon whose binary was deleted (a removed checkout) is pointed out:
// it would look for kiln-init beside a binary that is gone.
func TestCLIWarnsOfADaemonWhoseBinaryIsGone(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := t.TempDir()
	for _, f := range []string{"kiln", "kiln-init"} {
		b, err := os.ReadFile(filepath.Join(binDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(filepath.Join(dir, "kiln"), "--root", e.root, "ps")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("starting a daemon from a copy: %v\n%s", err, out)
	}
	if r := e.kiln("ps"); strings.Contains(r.stderr, "no longer exists") {
		t.Fatalf("warned while the daemon's binary exists:\n%s", r)
	}
	os.RemoveAll(dir)
	r := e.kiln("ps")
	if r.code != 0 || !strings.Contains(r.stderr, "which no longer exists: stop it") {
		t.Errorf("want a warning about the daemon's deleted binary:\n%s", r)
	}
}

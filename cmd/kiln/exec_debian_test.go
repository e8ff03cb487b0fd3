package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/api"
)

// loadDebian loads the Debian userland fixture into e's root as
// kiln-test/debian:bookworm, or skips.
func loadDebian(t *testing.T, e *env, edit func(*v1.Config)) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(debianRootfs, ".complete")); err != nil {
		t.Skipf("no Debian userland at %s: run scripts/fetch-test-rootfs (make test does)", debianRootfs)
	}
	layers := dirLayers(t, debianRootfs, func(top string) bool { return top == "usr" })
	img := testImage(t, func(c *v1.Config) {
		c.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		c.Cmd = []string{"/bin/bash"}
		if edit != nil {
			edit(c)
		}
	}, layers[0], layers[1])
	e.loadImage("kiln-test/debian:bookworm", img)
}

// openPTY opens a pseudo-terminal pair on this host.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals on this host: %v", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	m := os.NewFile(uintptr(fd), "ptmx")
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// ptyReader collects what a pty master reads, for awaiting text.
type ptyReader struct {
	lines chan string
}

func newPTYReader(m *os.File) *ptyReader {
	r := &ptyReader{lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(m)
		for sc.Scan() {
			r.lines <- strings.TrimRight(sc.Text(), "\r")
		}
		close(r.lines)
	}()
	return r
}

func (r *ptyReader) await(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(time.Minute)
	var seen []string
	for {
		select {
		case l, ok := <-r.lines:
			if !ok {
				t.Fatalf("terminal closed before %q; saw %q", want, seen)
			}
			seen = append(seen, l)
			if strings.HasSuffix(strings.TrimSpace(l), want) { // after a prompt
				return
			}
		case <-deadline:
			t.Fatalf("no %q on the terminal; saw %q", want, seen)
		}
	}
}

func TestExecInDebian(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	loadDebian(t, e, nil)
	e.runD("--name", "deb", "--pull", "never", "--memory", "256m", "kiln-test/debian:bookworm",
		"/bin/sh", "-c", "echo up; exec sleep 100000")
	t.Cleanup(func() { e.kiln("rm", "-f", "deb") })
	e.awaitLog("deb", "up", 1)

	t.Run("tty", func(t *testing.T) {
		m, s := openPTY(t)
		if err := unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 31, Col: 101}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := e.command(ctx, "exec", "-it", "deb", "/bin/sh")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		s.Close()
		out := newPTYReader(m)
		io.WriteString(m, "stty size; tty\n")
		out.await(t, "31 101")
		out.await(t, "/dev/pts/0")
		// A new size on the local terminal reaches the guest's.
		if err := unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 42, Col: 123}); err != nil {
			t.Fatal(err)
		}
		// SIGWINCH → resize frame → guest ioctl: ask until the new size shows.
		asked := make(chan struct{})
		go func() {
			for {
				io.WriteString(m, "stty size\n")
				select {
				case <-asked:
					return
				case <-time.After(time.Second):
				}
			}
		}()
		out.await(t, "42 123")
		close(asked)
		io.WriteString(m, "exit 3\n")
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
			t.Errorf("exec -it exit: %v, want status 3", err)
		}
	})

	t.Run("stdin", func(t *testing.T) {
		r := ok(t, "exec -i", e.kilnStdin(strings.Repeat("x", 300000), "exec", "-i", "deb", "wc", "-c"))
		if strings.TrimSpace(r.stdout) != "300000" {
			t.Errorf("exec -i wc -c: %q, want 300000", r.stdout)
		}
		r = e.kiln("exec", "deb", "/bin/sh", "-c", "echo out; echo err >&2; exit 4")
		if r.code != 4 || r.stdout != "out\n" || r.stderr != "err\n" {
			t.Errorf("exec streams and code:\n%s", r)
		}
		r = ok(t, "exec -u -w", e.kiln("exec", "-u", "nobody", "-w", "/tmp", "deb", "/bin/sh", "-c", "id -un; pwd"))
		if r.stdout != "nobody\n/tmp\n" {
			t.Errorf("exec -u nobody -w /tmp: %q", r.stdout)
		}
	})

	t.Run("cp", func(t *testing.T) {
		src := t.TempDir()
		os.MkdirAll(filepath.Join(src, "conf", "sub"), 0o755)
		os.WriteFile(filepath.Join(src, "conf", "a.txt"), []byte("alpha\n"), 0o640)
		os.WriteFile(filepath.Join(src, "conf", "sub", "b.sh"), []byte("#!/bin/sh\necho beta\n"), 0o755)
		ok(t, "cp into the VM", e.kiln("cp", filepath.Join(src, "conf"), "deb:/etc/"))
		r := ok(t, "read back in the VM", e.kiln("exec", "deb", "/bin/sh", "-c", "cat /etc/conf/a.txt; /etc/conf/sub/b.sh; stat -c %a /etc/conf/a.txt"))
		if r.stdout != "alpha\nbeta\n640\n" {
			t.Errorf("copied files in the VM: %q", r.stdout)
		}
		// A file to a new name, then out again to a new host name.
		ok(t, "cp a file as a new name", e.kiln("cp", filepath.Join(src, "conf", "a.txt"), "deb:/root/renamed.txt"))
		dst := t.TempDir()
		ok(t, "cp out", e.kiln("cp", "deb:/root/renamed.txt", filepath.Join(dst, "back.txt")))
		if b, _ := os.ReadFile(filepath.Join(dst, "back.txt")); string(b) != "alpha\n" {
			t.Errorf("copied out: %q", b)
		}
		ok(t, "cp a directory out", e.kiln("cp", "deb:/etc/conf", dst))
		if b, _ := os.ReadFile(filepath.Join(dst, "conf", "sub", "b.sh")); string(b) != "#!/bin/sh\necho beta\n" {
			t.Errorf("directory copied out: %q", b)
		}
		r = e.kiln("cp", "deb:/no/such/file", dst)
		if r.code != 125 || !strings.Contains(r.stderr, "/no/such/file") {
			t.Errorf("cp of a missing file:\n%s", r)
		}
		r = e.kiln("cp", filepath.Join(src, "conf"), "deb:/no/such/dir/")
		if r.code != 125 || !strings.Contains(r.stderr, "/no/such/dir") {
			t.Errorf("cp into a missing directory:\n%s", r)
		}
		r = e.kiln("cp", "a", "b")
		if r.code != 125 || !strings.Contains(r.stderr, "VM:PATH") {
			t.Errorf("cp between two host paths:\n%s", r)
		}
	})
}

func TestHealthChecks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// The image's HEALTHCHECK checks every 30s; "plain" takes its command
	// and sets a shorter interval, "killed" gives its own check.
	loadDebian(t, e, func(c *v1.Config) {
		c.Healthcheck = &v1.HealthConfig{Test: []string{"CMD-SHELL", "test -f /tmp/ok"}, Interval: 30 * time.Second, Retries: 2}
	})
	run := func(name string, flags ...string) {
		args := append([]string{"--name", name, "--pull", "never", "--memory", "192m", "--restart", "on-failure"}, flags...)
		e.runD(append(args, "kiln-test/debian:bookworm", "/bin/sh", "-c", "touch /tmp/ok; echo up; exec sleep 100000")...)
	}
	t.Cleanup(func() { e.kiln("rm", "-f", "plain", "killed") })
	run("plain", "--health-interval", "1s")
	run("killed", "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s", "--health-retries", "2", "--health-on-failure", "kill")
	if got := e.inspect("plain", "{{json .Config.Healthcheck}}"); got != `{"test":["CMD-SHELL","test -f /tmp/ok"],"interval":"1s","retries":2}` {
		t.Errorf("plain's health check, the image's with -health-interval: %s", got)
	}
	e.awaitEvents("plain", "health_status: healthy", 1)
	if r := e.kiln("ps"); !strings.Contains(r.stdout, "(healthy)") {
		t.Errorf("ps of a healthy VM:\n%s", r)
	}
	ok(t, "break the check", e.kiln("exec", "plain", "rm", "/tmp/ok"))
	e.awaitEvents("plain", "health_status: unhealthy", 1)
	var h api.Health
	if err := json.Unmarshal([]byte(e.inspect("plain", "{{json .State.Health}}")), &h); err != nil {
		t.Fatal(err)
	}
	if h.Status != "unhealthy" || h.FailingStreak < 2 || len(h.Log) == 0 || h.Log[len(h.Log)-1].ExitCode != 1 {
		t.Errorf("health of the broken VM: %+v", h)
	}
	if got := e.inspect("plain", "{{.State.Status}}"); got != "running" {
		t.Errorf("--health-on-failure none left the VM %s", got)
	}
	ok(t, "mend the check", e.kiln("exec", "plain", "touch", "/tmp/ok"))
	e.awaitEvents("plain", "health_status: healthy", 2)

	// kill: the program is killed, and --restart on-failure brings it back.
	e.awaitEvents("killed", "health_status: healthy", 1)
	ok(t, "break the check", e.kiln("exec", "killed", "rm", "/tmp/ok"))
	e.awaitEvents("killed", "health_status: unhealthy", 1)
	e.awaitEvents("killed", "died", 1)
	e.awaitEvents("killed", "restarted", 1)
	e.awaitEvents("killed", "health_status: healthy", 2)
	if n := e.inspect("killed", "{{.State.RestartCount}}"); n != "1" {
		t.Errorf("restart count after the unhealthy kill: %s", n)
	}

	r := e.kiln("run", "-d", "--kernel", e.kernel, "--health-on-failure", "explode", e.hello())
	if r.code != 125 || !strings.Contains(r.stderr, `"explode"`) {
		t.Errorf("bad --health-on-failure:\n%s", r)
	}
	if n := len(e.vmDirs()); n != 2 {
		t.Errorf("%d VM directories after a refused run, want 2", n)
	}
}

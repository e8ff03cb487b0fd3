//go:build linux

// Command kiln-init is PID 1 inside every kiln guest. It mounts the basic
// filesystems, loads kernel modules, reads its Spec from the initramfs, runs
// the one program the VM exists for, forwards signals to it, reaps orphans,
// reports the program's exit status to the host on the status port and
// powers the VM off. It never panics the kernel: whatever goes wrong is
// reported to the host as an error record, then the VM powers off.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/agent"
)

// console is where kiln-init's own diagnostics go: the kernel console,
// which the host keeps as the VM's console log.
var console io.Writer = os.Stderr

func logf(format string, args ...any) {
	fmt.Fprintf(console, "kiln-init: "+format+"\n", args...)
}

func main() {
	code := run()
	unix.Sync()
	powerOff(code)
}

// run does everything up to the program's end and returns the exit code it
// reported, for the console.
func run() int {
	uptime := mountBasics()
	spec, specErr := readSpec()
	if specErr == nil {
		if err := loadModules(spec.Modules); err != nil {
			specErr = err
		}
	}
	status, err := openPort(agent.PortStatus)
	if err != nil {
		logf("opening status port: %v", err)
		diagnose()
		if specErr != nil {
			logf("%v", specErr)
		}
		return 125
	}
	defer status.Close()
	if specErr != nil {
		return reportError(status, 125, specErr)
	}
	reqs := make(chan agent.Request, 4)
	srv := &server{reqs: reqs}
	if spec.Template {
		// A template: serve the control port now and wait for the VM's
		// spec, which comes in a run restored from this guest's state.
		srv.specs = make(chan *agent.Spec, 1)
		go serveControl(srv)
		writeRecord(status, agent.Record{Kind: agent.KindReady, Uptime: uptime})
		spec = <-srv.specs
		uptime = readUptime()
	} else {
		srv.spec.Store(spec)
	}
	if spec.Root != nil {
		if err := switchRoot(spec.Root, spec.Mounts); err != nil {
			return reportError(status, 125, err)
		}
	} else if err := setupMounts(spec.Mounts, "/"); err != nil {
		return reportError(status, 125, err)
	}
	if err := setupNetwork(spec); err != nil {
		return reportError(status, 125, fmt.Errorf("configuring the network: %w", err))
	}
	if err := applyUser(spec); err != nil {
		return reportError(status, 125, err)
	}
	if err := setup(spec); err != nil {
		return reportError(status, 125, err)
	}
	path, code, err := resolveProgram(spec)
	if err != nil {
		return reportError(status, code, err)
	}
	child, err := start(spec, path)
	if err != nil {
		return reportError(status, 126, err)
	}
	writeRecord(status, agent.Record{Kind: agent.KindStarted, PID: child.Pid, Uptime: uptime})
	if srv.specs == nil {
		go serveControl(srv)
	}
	code, sig := supervise(spec, child.Pid, reqs)
	writeRecord(status, agent.Record{Kind: agent.KindExit, PID: child.Pid, ExitCode: agent.ExitCodeFor(code, sig), Signal: sig, OOMKilled: oomKills() > 0})
	return agent.ExitCodeFor(code, sig)
}

func reportError(status io.Writer, code int, err error) int {
	logf("%v", err)
	writeRecord(status, agent.Record{Kind: agent.KindError, ExitCode: code, Error: err.Error()})
	return code
}

func writeRecord(w io.Writer, r agent.Record) {
	r.Version = agent.Version
	if err := agent.WriteLine(w, r); err != nil {
		logf("reporting %s: %v", r.Kind, err)
	}
}

// mountBasics mounts the filesystems every program expects and returns the
// guest uptime (seconds) read right after /proc is there.
func mountBasics() float64 {
	mounts := []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
		mode             os.FileMode
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", 0o755},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
	}
	var uptime float64
	for _, m := range mounts {
		if err := os.MkdirAll(m.dst, m.mode); err != nil {
			logf("creating %s: %v", m.dst, err)
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			logf("mounting %s on %s: %v", m.fstype, m.dst, err)
		}
		if m.dst == "/proc" {
			uptime = readUptime()
		}
	}
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		console = f
	}
	return uptime
}

func readUptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f, _, _ := strings.Cut(string(b), " ")
	v, _ := strconv.ParseFloat(f, 64)
	return v
}

func readSpec() (*agent.Spec, error) {
	b, err := os.ReadFile(agent.SpecPath)
	if err != nil {
		return nil, fmt.Errorf("reading spec: %w", err)
	}
	var s agent.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parsing spec %s: %w", agent.SpecPath, err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("checking spec: %w", err)
	}
	return &s, nil
}

// loadModules loads kernel modules in the given (dependency) order, with the
// parameters the kernel command line gives them ("virtio_mmio.device=…"):
// the kernel applies those to built-in code only, and modprobe, which passes
// them to loadable modules, is not in the guest. Compressed modules are
// handed to the kernel to decompress.
func loadModules(paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("opening module: %w", err)
		}
		flags := 0
		if strings.HasSuffix(p, ".xz") || strings.HasSuffix(p, ".zst") || strings.HasSuffix(p, ".gz") {
			flags = unix.MODULE_INIT_COMPRESSED_FILE
		}
		params := moduleParams(string(cmdline), moduleName(p))
		err = unix.FinitModule(int(f.Fd()), params, flags)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("loading module %s: %w", filepath.Base(p), err)
		}
	}
	return nil
}

// moduleName returns the kernel's name for a module file: the base name
// without its extensions, with '-' as '_'.
func moduleName(p string) string {
	base := filepath.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// moduleParams returns the "param=value" words of cmdline that are
// addressed to module (as "module.param=value"), space-separated.
func moduleParams(cmdline, module string) string {
	var out []string
	for _, w := range strings.Fields(cmdline) {
		name, rest, ok := strings.Cut(w, ".")
		if ok && strings.ReplaceAll(name, "-", "_") == module && rest != "" {
			out = append(out, rest)
		}
	}
	return strings.Join(out, " ")
}

// openPort opens the virtio-serial port with the given name. Ports are found
// by name in sysfs (there is no udev in the guest); their device nodes may
// appear a moment after the driver probes them, so this waits for them, up to
// a bound.
func openPort(name string) (*os.File, error) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		f, err := findPort(name)
		if err == nil || time.Now().After(deadline) {
			return f, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func findPort(name string) (*os.File, error) {
	dirs, err := filepath.Glob("/sys/class/virtio-ports/*")
	if err != nil {
		return nil, err
	}
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		return os.OpenFile(filepath.Join("/dev", filepath.Base(d)), os.O_RDWR, 0)
	}
	return nil, fmt.Errorf("no virtio-serial port named %q", name)
}

// diagnose prints to the console what the guest has, when the host's
// channel to kiln-init is missing: the command line, the loaded modules and
// the virtio devices.
func diagnose() {
	for _, f := range []string{"/proc/cmdline", "/proc/modules"} {
		if b, err := os.ReadFile(f); err == nil {
			logf("%s: %s", f, strings.Join(strings.Fields(string(b)), " "))
		}
	}
	devs, _ := filepath.Glob("/sys/bus/virtio/devices/*/device")
	var ids []string
	for _, d := range devs {
		b, _ := os.ReadFile(d)
		ids = append(ids, filepath.Base(filepath.Dir(d))+"="+strings.TrimSpace(string(b)))
	}
	logf("virtio devices: %s", strings.Join(ids, " "))
}

// setup applies the VM-wide parts of the spec: hostname, rlimits, working
// directory.
func setup(s *agent.Spec) error {
	if s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("setting hostname %q: %w", s.Hostname, err)
		}
	}
	for _, r := range s.Rlimits {
		lim := syscall.Rlimit{Cur: r.Soft, Max: r.Hard}
		if err := syscall.Setrlimit(agent.RlimitResources[r.Name], &lim); err != nil {
			return fmt.Errorf("setting rlimit %s=%d:%d: %w", r.Name, r.Soft, r.Hard, err)
		}
	}
	if s.WorkingDir != "" {
		if err := os.MkdirAll(s.WorkingDir, 0o755); err != nil {
			return fmt.Errorf("creating working directory: %w", err)
		}
	}
	return nil
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// resolveProgram finds Args[0] as a shell would, returning the docker exit
// code for the failure (127 not found, 126 not executable).
func resolveProgram(s *agent.Spec) (string, int, error) {
	name := s.Args[0]
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) && s.WorkingDir != "" {
			p = filepath.Join(s.WorkingDir, p)
		}
		return checkExecutable(name, p)
	}
	path := envValue(s.Env, "PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return checkExecutable(name, p)
		}
	}
	return "", 127, fmt.Errorf("program %q not found in PATH %s", name, path)
}

func checkExecutable(name, p string) (string, int, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", 127, fmt.Errorf("program %q not found: %w", name, err)
	}
	if st.IsDir() {
		return "", 126, fmt.Errorf("program %q is a directory", name)
	}
	if st.Mode()&0o111 == 0 {
		return "", 126, fmt.Errorf("program %q is not executable (mode %v)", name, st.Mode())
	}
	return p, 0, nil
}

// start starts the program in its own session with its stdout and stderr on
// their own ports and stdin on /dev/null.
func start(s *agent.Spec, path string) (*os.Process, error) {
	stdin, err := os.Open("/dev/null")
	if err != nil {
		return nil, fmt.Errorf("opening /dev/null: %w", err)
	}
	defer stdin.Close()
	stdout, err := openPort(agent.PortStdout)
	if err != nil {
		return nil, fmt.Errorf("opening stdout port: %w", err)
	}
	defer stdout.Close()
	stderr, err := openPort(agent.PortStderr)
	if err != nil {
		return nil, fmt.Errorf("opening stderr port: %w", err)
	}
	defer stderr.Close()
	dir := s.WorkingDir
	if dir == "" {
		dir = "/"
	}
	p, err := os.StartProcess(path, s.Args, &os.ProcAttr{
		Dir:   dir,
		Env:   s.Env,
		Files: []*os.File{stdin, stdout, stderr},
		Sys: &syscall.SysProcAttr{
			Setsid:     true,
			Credential: &syscall.Credential{Uid: s.UID, Gid: s.GID, Groups: s.AdditionalGIDs},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", path, err)
	}
	return p, nil
}

// supervise forwards signals to the program, serves control requests, reaps
// every child (PID 1 inherits orphans) and returns when the program ends:
// its exit status, or the signal that killed it.
func supervise(s *agent.Spec, pid int, reqs <-chan agent.Request) (status, sig int) {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs)
	stopSig := syscall.SIGTERM
	if s.StopSignal > 0 {
		stopSig = syscall.Signal(s.StopSignal)
	}
	var killTimer <-chan time.Time
	for {
		select {
		case sg := <-sigs:
			if sg == syscall.SIGCHLD {
				if st, done := reap(pid); done {
					return exitStatus(st)
				}
				continue
			}
			if sg == syscall.SIGURG || sg == syscall.SIGIO {
				continue // Go runtime preemption / port hotplug notices
			}
			_ = syscall.Kill(pid, sg.(syscall.Signal))
		case r := <-reqs:
			switch r.Op {
			case agent.OpSignal:
				_ = syscall.Kill(pid, syscall.Signal(r.Signal))
			case agent.OpStop:
				sg := stopSig
				if r.Signal > 0 {
					sg = syscall.Signal(r.Signal)
				}
				logf("stop requested: sending %v, then SIGKILL after %dms", sg, r.GraceMillis)
				_ = syscall.Kill(pid, sg)
				killTimer = time.After(time.Duration(r.GraceMillis) * time.Millisecond)
			}
		case <-killTimer:
			logf("grace period over: killing the program")
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// reap collects every exited child and reports whether pid was among them.
func reap(pid int) (syscall.WaitStatus, bool) {
	var found syscall.WaitStatus
	done := false
	procs.mu.Lock()
	defer procs.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		p, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if p <= 0 || err != nil {
			return found, done
		}
		if p == pid {
			found, done = ws, true
		}
		execExited(p, ws)
	}
}

func exitStatus(ws syscall.WaitStatus) (int, int) {
	if ws.Signaled() {
		return 0, int(ws.Signal())
	}
	return ws.ExitStatus(), 0
}

// powerOff ends every remaining process and ends the VM. It restarts rather
// than powers off: the guest has no ACPI (microvm runs with acpi=off, and
// Firecracker has none), where a power-off only halts the CPU and leaves the
// VMM running, while a restart (reboot=t, a triple fault) ends QEMU run with
// -no-reboot and ends Firecracker on every architecture it supports.
func powerOff(code int) {
	_ = syscall.Kill(-1, syscall.SIGKILL)
	unix.Sync()
	logf("program exited with code %d; ending the VM", code)
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

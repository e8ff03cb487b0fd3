// Package qemu is kiln's QEMU backend: a microvm machine per VM, driven
// over QMP.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/atomicfile"
	"kiln.dev/kiln/internal/unixsock"
	"kiln.dev/kiln/internal/vmm"
)

// DefaultBinary is the QEMU executable looked up in PATH.
const DefaultBinary = "qemu-system-x86_64"

// Machine is one QEMU microvm.
type Machine struct {
	cfg vmm.Config
	log *slog.Logger

	// mu guards the fields below.
	mu   sync.Mutex
	pid  int
	argv []string
	// done is closed by the one goroutine that waits on the process.
	done chan struct{}
}

var _ vmm.VMM = (*Machine)(nil)

// Option configures a Machine.
type Option func(*Machine)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(m *Machine) { m.log = l } }

// New returns a Machine for cfg; nothing starts until Start.
func New(cfg vmm.Config, opts ...Option) (*Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 3 * time.Second
	}
	m := &Machine{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(m)
	}
	return m, nil
}

// FindBinary returns the QEMU executable: bin when set, else
// qemu-system-x86_64 from PATH, with the fix in the error.
func FindBinary(bin string) (string, error) {
	if bin == "" {
		bin = DefaultBinary
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("QEMU (%s) not found: install it with apt-get install qemu-system-x86, or run scripts/setup (%w)", bin, vmm.ErrUnavailable)
	}
	return p, nil
}

// Start starts QEMU in its own session, so that it outlives the process
// that started it, and returns once QEMU answers on QMP. If QEMU dies during
// start-up the error carries what it printed.
func (m *Machine) Start(ctx context.Context) (err error) {
	bin, err := FindBinary(m.cfg.Binary)
	if err != nil {
		return err
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	qmpFile, err := listen(filepath.Join(m.cfg.Dir, QMPSocket))
	if err != nil {
		return err
	}
	files = append(files, qmpFile)
	for _, p := range m.cfg.Ports {
		if p.Pipe != "" {
			if err := MakePipe(p.Pipe); err != nil {
				return err
			}
			continue
		}
		if p.Socket == "" {
			if err := touch(p.File); err != nil {
				return err
			}
			continue
		}
		f, err := listen(p.Socket)
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	if err := MakeConsole(m.cfg.Dir); err != nil {
		return err
	}
	stderr, err := os.OpenFile(filepath.Join(m.cfg.Dir, StderrLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("creating QEMU log: %w", err)
	}
	defer stderr.Close()
	var (
		cmd  *exec.Cmd
		argv []string
	)
	cfg, inherit := m.cfg, files
	if cfg.Incoming != nil {
		// The saved state follows the listeners; the caller closes it.
		inherit = append(append([]*os.File(nil), files...), cfg.Incoming)
		cfg.IncomingFD = 3 + len(inherit) - 1
	}
	if cfg.Jail != nil {
		var closeTAP func()
		if cmd, argv, closeTAP, err = jailCommand(bin, &cfg, inherit, stderr); err != nil {
			return err
		}
		defer closeTAP()
	} else {
		if cfg.Net != nil && cfg.Net.Mode == vmm.NetTAP && cfg.Net.NetNS != "" {
			// A TAP in another network namespace: opened there and
			// handed over, since QEMU cannot name it from here.
			tap, err := openTAP(cfg.Net)
			if err != nil {
				return err
			}
			defer tap.Close()
			inherit = append(append([]*os.File(nil), inherit...), tap)
			n := *cfg.Net
			n.TAPFD = 3 + len(inherit) - 1
			cfg.Net = &n
		}
		argv = Argv(bin, &cfg)
		// Not CommandContext: the VM must outlive ctx.
		cmd = exec.Command(argv[0], argv[1:]...)
		cmd.Dir = m.cfg.Dir
		cmd.Stdout = stderr
		cmd.Stderr = stderr
		cmd.ExtraFiles = inherit
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	cmd.Stdin = nil
	m.log.Debug("starting qemu", "vm", m.cfg.ID, "argv", strings.Join(argv, " "), "jailed", m.cfg.Jail != nil)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting QEMU: %w", err)
	}
	done := make(chan struct{})
	m.mu.Lock()
	m.pid, m.argv, m.done = cmd.Process.Pid, argv, done
	m.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	defer func() {
		if err != nil {
			_ = cmd.Process.Kill()
			<-done
			os.Remove(filepath.Join(m.cfg.Dir, PIDFile))
		}
	}()
	if err := writeFileAtomic(filepath.Join(m.cfg.Dir, PIDFile), []byte(strconv.Itoa(cmd.Process.Pid)+"\n")); err != nil {
		return fmt.Errorf("writing pidfile: %w", err)
	}
	if err := m.ping(ctx, done); err != nil {
		// A QEMU that dies at start-up may drop the QMP connection a moment
		// before its exit is seen; give the exit a bounded chance to show,
		// so the error carries what QEMU printed.
		t := time.NewTimer(2 * time.Second)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
		}
		select {
		case <-done:
			return fmt.Errorf("QEMU exited during start-up: %s: %w", orNone(LastLines(filepath.Join(m.cfg.Dir, StderrLog), 5), "(no output)"), err)
		default:
			return fmt.Errorf("QEMU did not answer on QMP: %w", err)
		}
	}
	if cfg.Incoming != nil {
		if err := m.waitIncoming(ctx, done); err != nil {
			return err
		}
	}
	return nil
}

// ping waits for QEMU's QMP greeting and checks its status. It returns early
// when the process exits.
func (m *Machine) ping(ctx context.Context, done <-chan struct{}) error {
	type result struct{ err error }
	ch := make(chan result, 1)
	go func() {
		_, err := m.qmp(ctx, "query-status")
		ch <- result{err}
	}()
	select {
	case r := <-ch:
		return r.err
	case <-done:
		return vmm.ErrNotRunning
	case <-ctx.Done():
		return ctx.Err()
	}
}

// qmp runs one QMP command on a fresh connection. QEMU serves one QMP
// client at a time per monitor; kiln's commands are rare and short.
func (m *Machine) qmp(ctx context.Context, command string) (json.RawMessage, error) {
	var raw json.RawMessage
	err := m.session(ctx, func(mon *qmp.SocketMonitor) error {
		var err error
		raw, err = mon.Run([]byte(`{"execute":"` + command + `"}`))
		if err != nil {
			return fmt.Errorf("running QMP %s: %w", command, err)
		}
		return nil
	})
	return raw, err
}

// session runs fn on one QMP connection, for commands that belong
// together (a descriptor passed with getfd is used by the next command).
func (m *Machine) session(_ context.Context, fn func(*qmp.SocketMonitor) error) error {
	sock := filepath.Join(m.cfg.Dir, QMPSocket)
	var mon *qmp.SocketMonitor
	err := unixsock.WithPath(sock, func(p string) error {
		var err error
		mon, err = qmp.NewSocketMonitor("unix", p, 5*time.Second)
		return err
	})
	if err != nil {
		return fmt.Errorf("connecting to QMP: %w", err)
	}
	defer mon.Disconnect()
	if err := mon.Connect(); err != nil {
		return fmt.Errorf("QMP handshake: %w", err)
	}
	return fn(mon)
}

// Wait blocks until QEMU has exited or ctx is done.
func (m *Machine) Wait(ctx context.Context) error {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	if done == nil {
		return vmm.ErrNotRunning
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop ends QEMU: QMP quit, then SIGTERM, then SIGKILL, each given
// StopTimeout. It returns an error wrapping vmm.ErrTimeout when QMP quit did
// not end it. Asking the guest to stop its program comes before this and is
// the runtime's job (it speaks the guest agent).
func (m *Machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	done, pid := m.done, m.pid
	m.mu.Unlock()
	if done == nil {
		return vmm.ErrNotRunning
	}
	wait := func() bool {
		t := time.NewTimer(m.cfg.StopTimeout)
		defer t.Stop()
		select {
		case <-done:
			return true
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
	select {
	case <-done:
		return nil
	default:
	}
	if _, err := m.qmp(ctx, "quit"); err != nil {
		m.log.Debug("qmp quit failed", "vm", m.cfg.ID, "err", err)
	}
	if wait() {
		return nil
	}
	m.log.Warn("qemu ignored quit: sending SIGTERM", "vm", m.cfg.ID, "pid", pid)
	_ = unix.Kill(pid, unix.SIGTERM)
	if wait() {
		return fmt.Errorf("stopping VM %s: QMP quit: %w", m.cfg.ID, vmm.ErrTimeout)
	}
	m.log.Warn("qemu ignored SIGTERM: sending SIGKILL", "vm", m.cfg.ID, "pid", pid)
	_ = unix.Kill(pid, unix.SIGKILL)
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return fmt.Errorf("stopping VM %s: SIGTERM: %w", m.cfg.ID, vmm.ErrTimeout)
}

// Kill ends QEMU at once with SIGKILL and waits for it to be gone.
func (m *Machine) Kill() error {
	m.mu.Lock()
	done, pid := m.done, m.pid
	m.mu.Unlock()
	if done == nil {
		return vmm.ErrNotRunning
	}
	select {
	case <-done:
		return nil
	default:
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("killing QEMU pid %d: %w", pid, err)
	}
	<-done
	return nil
}

// Info describes the QEMU process.
func (m *Machine) Info() vmm.Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	running := false
	if m.done != nil {
		select {
		case <-m.done:
		default:
			running = true
		}
	}
	return vmm.Info{Backend: "qemu", PID: m.pid, Running: running, Accel: m.cfg.Accel, Argv: m.argv}
}

// Attach takes over the QEMU of a VM started earlier, perhaps by another
// kiln process: it reads the pidfile and checks /proc/<pid>/cmdline, so a
// PID reused by another process is never taken for the VM. It returns
// vmm.ErrNotRunning when the VM's QEMU is gone.
func Attach(cfg vmm.Config, opts ...Option) (*Machine, error) {
	m, err := New(cfg, opts...)
	if err != nil {
		return nil, err
	}
	pid, err := FindProcess(cfg.Dir, cfg.ID)
	if err != nil {
		return nil, err
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("watching QEMU pid %d: %w", pid, vmm.ErrNotRunning)
	}
	done := make(chan struct{})
	go func() {
		defer unix.Close(fd)
		defer close(done)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != nil && errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
	}()
	m.mu.Lock()
	m.pid, m.done = pid, done
	m.argv, _ = readCmdline(pid)
	m.mu.Unlock()
	return m, nil
}

// FindProcess returns the PID of VM id's QEMU from the pidfile in dir, after
// checking that the process is alive and is that VM's QEMU. When the
// pidfile is missing or wrong, it looks for the process by its -name mark,
// so a damaged pidfile never leaves a running VM untracked (and rewrites
// the pidfile when it finds it).
func FindProcess(dir, id string) (int, error) {
	pid, err := fromPIDFile(dir, id)
	if err == nil {
		return pid, nil
	}
	if pid, serr := scanProcesses(id); serr == nil {
		_ = writeFileAtomic(filepath.Join(dir, PIDFile), []byte(strconv.Itoa(pid)+"\n"))
		return pid, nil
	}
	return 0, err
}

// scanProcesses finds the QEMU whose command line carries -name kiln-<id>.
func scanProcesses(id string) (int, error) {
	mark := "\x00-name\x00" + ProcessName(id) + "\x00"
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), mark) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err == nil {
			return pid, nil
		}
	}
	return 0, vmm.ErrNotRunning
}

func fromPIDFile(dir, id string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, PIDFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("VM %s has no pidfile: %w", id, vmm.ErrNotRunning)
	}
	if err != nil {
		return 0, fmt.Errorf("reading pidfile: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("VM %s: corrupt pidfile %q: %w", id, b, vmm.ErrNotRunning)
	}
	argv, err := readCmdline(pid)
	if err != nil {
		return 0, fmt.Errorf("VM %s: pid %d is gone: %w", id, pid, vmm.ErrNotRunning)
	}
	for i, a := range argv {
		if a == "-name" && i+1 < len(argv) && argv[i+1] == ProcessName(id) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("VM %s: pid %d is another process now: %w", id, pid, vmm.ErrNotRunning)
}

func readCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, errors.New("zombie or kernel thread")
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), nil
}

// listen makes a unix listener at path (0600) and returns it as a file for
// QEMU to inherit.
func listen(path string) (*os.File, error) {
	os.Remove(path)
	var l *net.UnixListener
	err := unixsock.WithPath(path, func(p string) error {
		var err error
		l, err = net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting %s: %w", path, err)
	}
	f, err := l.File()
	l.Close()
	if err != nil {
		return nil, fmt.Errorf("handing over %s: %w", path, err)
	}
	return f, nil
}

func touch(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	return f.Close()
}

// ConsoleFIFO returns the FIFO in dir that a VM's serial console comes out
// of (vmm.ConsoleFIFO).
func ConsoleFIFO(dir string) string { return vmm.ConsoleFIFO(dir) }

// MakeConsole makes the console's FIFOs in dir (vmm.MakeConsole).
func MakeConsole(dir string) error { return vmm.MakeConsole(dir) }

// MakePipe makes the FIFOs of a pipe port or console (vmm.MakePipe).
func MakePipe(pipe string) error { return vmm.MakePipe(pipe) }

func writeFileAtomic(path string, data []byte) error {
	return atomicfile.WriteFile(path, data, 0o600)
}

// MaxTail is how much of the end of a log LastLines reads (vmm.MaxTail).
const MaxTail = vmm.MaxTail

// LastLines returns the last n non-empty lines of a file (vmm.LastLines).
func LastLines(path string, n int) string { return vmm.LastLines(path, n) }

// ReadTail reads at most limit bytes from the end of a file (vmm.ReadTail).
func ReadTail(path string, limit int64) ([]byte, error) { return vmm.ReadTail(path, limit) }

// orNone is s, or none when s is empty.
func orNone(s, none string) string {
	if s == "" {
		return none
	}
	return s
}

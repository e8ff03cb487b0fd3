//go:build linux

package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/options"
)

// procs hands the exit status of commands run for the host (exec) to the
// sessions waiting for them. kiln-init, as PID 1, reaps every child in
// one place (reap); a command is registered under procs.mu in the same
// critical section that starts it, so its status cannot be reaped first.
var procs = struct {
	mu   sync.Mutex
	wait map[int]chan syscall.WaitStatus
}{wait: map[int]chan syscall.WaitStatus{}}

// execExited delivers the status of a reaped child that is an exec'd
// command. Precondition: procs.mu held.
func execExited(pid int, ws syscall.WaitStatus) {
	if c, ok := procs.wait[pid]; ok {
		delete(procs.wait, pid)
		c <- ws
	}
}

// serveControl serves the host on the control port: one connection after
// another (the port reads EOF while no host is connected; the driver
// sends SIGIO when one connects, and a slow timer covers a missed notice).
// Stop and signal requests for the program go to srv.reqs.
func serveControl(srv *server) {
	f, err := openPort(agent.PortControl)
	if err != nil {
		logf("control port unavailable: %v", err)
		return
	}
	sigio := make(chan os.Signal, 1)
	signal.Notify(sigio, syscall.SIGIO)
	if err := unix.SetNonblock(int(f.Fd()), false); err == nil {
		_, _ = unix.FcntlInt(f.Fd(), unix.F_SETOWN, os.Getpid())
		if fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err == nil {
			_, _ = unix.FcntlInt(f.Fd(), unix.F_SETFL, fl|unix.O_ASYNC)
		}
	}
	for {
		if err := srv.serve(f); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, agent.ErrClosed) {
			logf("control connection: %v", err)
		}
		select {
		case <-sigio:
		case <-time.After(time.Second):
		}
	}
}

type server struct {
	// spec is the VM's spec; nil while a template boot waits for it.
	spec atomic.Pointer[agent.Spec]
	reqs chan<- agent.Request
	// specs, set in a template boot, takes the spec OpSpec delivers (once).
	specs chan *agent.Spec
}

// serve runs one host connection: hello, then channels until the host
// goes away, when every session it opened is ended.
func (s *server) serve(f *os.File) error {
	r := bufio.NewReaderSize(f, 64<<10)
	if err := agent.SkipToMagic(r); err != nil {
		return err
	}
	fr, err := agent.ReadFrame(r)
	if err != nil {
		return err
	}
	var h agent.Hello
	if fr.Type != agent.FrameHello || json.Unmarshal(fr.Payload, &h) != nil {
		return fmt.Errorf("expected a hello, got a frame of type %d", fr.Type)
	}
	reply, _ := json.Marshal(agent.Hello{Version: agent.ControlVersion, Agent: "kiln-init"})
	if _, err := f.Write(agent.AppendFrame(append([]byte(nil), agent.Magic...), agent.Frame{Type: agent.FrameHello, Payload: reply})); err != nil {
		return err
	}
	if h.Version != agent.ControlVersion {
		return fmt.Errorf("host speaks control protocol version %d, kiln-init %d", h.Version, agent.ControlVersion)
	}
	m := agent.NewMux(r, f, s.open)
	return m.Run()
}

// open handles one channel the host opened.
func (s *server) open(ch *agent.Channel, payload []byte) {
	defer ch.Close()
	var req agent.OpenRequest
	if err := json.Unmarshal(payload, &req); err != nil {
		_ = ch.SendJSON(agent.FrameReply, agent.Reply{Error: fmt.Sprintf("bad request: %v", err), ExitCode: 125})
		return
	}
	switch req.Op {
	case agent.OpStop, agent.OpSignal:
		if req.Op == agent.OpSignal && (req.Signal <= 0 || req.Signal > 64) {
			_ = ch.SendJSON(agent.FrameReply, agent.Reply{Error: fmt.Sprintf("invalid signal %d", req.Signal)})
			return
		}
		s.reqs <- agent.Request{Version: agent.Version, Op: req.Op, Signal: req.Signal, GraceMillis: req.GraceMillis}
		_ = ch.SendJSON(agent.FrameReply, agent.Reply{})
	case agent.OpStats:
		st := guestStats()
		_ = ch.SendJSON(agent.FrameReply, agent.Reply{Stats: &st})
	case agent.OpTop:
		procs, truncated := guestTop("/proc", topBudget)
		_ = ch.SendJSON(agent.FrameReply, agent.Reply{Processes: procs, Truncated: truncated})
	case agent.OpSetTime:
		_ = ch.SendJSON(agent.FrameReply, setTime(req.TimeNanos))
	case agent.OpSpec:
		_ = ch.SendJSON(agent.FrameReply, s.takeSpec(&req))
	case agent.OpExec:
		s.exec(ch, req.Exec)
	case agent.OpCopyOut:
		copyOut(ch, req.Path)
	case agent.OpCopyIn:
		copyIn(ch, req.Path)
	default:
		_ = ch.SendJSON(agent.FrameReply, agent.Reply{Error: fmt.Sprintf("unknown operation %q", req.Op), ExitCode: 125})
	}
}

func (s *server) exec(ch *agent.Channel, req *agent.ExecRequest) {
	fail := func(code int, err error) {
		_ = ch.SendJSON(agent.FrameReply, agent.Reply{Error: err.Error(), ExitCode: code})
	}
	if req == nil || len(req.Args) == 0 {
		fail(125, errors.New("exec: no command"))
		return
	}
	spec := s.spec.Load()
	if spec == nil {
		fail(125, errors.New("exec: the VM has no spec yet"))
		return
	}
	env := options.MergeEnv(spec.Env, req.Env)
	cwd := req.WorkingDir
	if cwd == "" {
		cwd = spec.WorkingDir
	}
	if cwd == "" {
		cwd = "/"
	}
	cred := &syscall.Credential{Uid: spec.UID, Gid: spec.GID, Groups: spec.AdditionalGIDs}
	if req.User != "" {
		u, err := resolveUser(req.User)
		if err != nil {
			fail(125, err)
			return
		}
		cred = &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: u.sgids}
		env = options.MergeEnv(env, []string{"HOME=" + u.home})
	}
	path, code, err := resolveProgram(&agent.Spec{Args: req.Args, Env: env, WorkingDir: cwd})
	if err != nil {
		fail(code, err)
		return
	}
	sess, err := startExec(path, req, env, cwd, cred)
	if err != nil {
		fail(126, err)
		return
	}
	if err := ch.SendJSON(agent.FrameReply, agent.Reply{PID: sess.pid}); err != nil {
		sess.kill()
	}
	sess.run(ch)
}

func resolveUser(spec string) (execUser, error) {
	passwd, err := readDB("/etc/passwd", parsePasswd)
	if err != nil {
		return execUser{}, err
	}
	group, err := readDB("/etc/group", parseGroup)
	if err != nil {
		return execUser{}, err
	}
	return lookupUser(spec, passwd, group)
}

// session is one running exec'd command.
type session struct {
	pid    int
	tty    *os.File // the pty master, with a tty
	stdin  *os.File // the write end of the command's stdin, when piped
	outs   []*os.File
	status chan syscall.WaitStatus
	exited atomic.Bool
}

// startExec starts the command in a new session: with a tty, on a new
// pseudo-terminal that becomes its controlling terminal; otherwise on
// pipes (stdin on /dev/null unless the host sends it).
func startExec(path string, req *agent.ExecRequest, env []string, cwd string, cred *syscall.Credential) (*session, error) {
	s := &session{status: make(chan syscall.WaitStatus, 1)}
	var files []*os.File // the command's ends, closed here once it started
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	attr := &syscall.SysProcAttr{Setsid: true, Credential: cred}
	if req.TTY {
		master, slave, err := openPTY(req.Rows, req.Cols, cred.Uid)
		if err != nil {
			return nil, err
		}
		s.tty = master
		files = []*os.File{slave, slave, slave}
		attr.Setctty, attr.Ctty = true, 0
	} else {
		if req.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, err
			}
			s.stdin = w
			files = append(files, r)
		} else {
			null, err := os.Open(os.DevNull)
			if err != nil {
				return nil, err
			}
			files = append(files, null)
		}
		for i := 0; i < 2; i++ {
			r, w, err := os.Pipe()
			if err != nil {
				s.closeAll()
				return nil, err
			}
			s.outs = append(s.outs, r)
			files = append(files, w)
		}
	}
	procs.mu.Lock()
	p, err := os.StartProcess(path, req.Args, &os.ProcAttr{Dir: cwd, Env: env, Files: files, Sys: attr})
	if err == nil {
		s.pid = p.Pid
		procs.wait[p.Pid] = s.status
		p.Release()
	}
	procs.mu.Unlock()
	if err != nil {
		s.closeAll()
		return nil, fmt.Errorf("exec %s: %w", path, err)
	}
	return s, nil
}

func (s *session) closeAll() {
	for _, f := range append([]*os.File{s.tty, s.stdin}, s.outs...) {
		if f != nil {
			f.Close()
		}
	}
}

// kill ends the command and everything it started (its session's process
// group).
func (s *session) kill() {
	if s.exited.Load() {
		return // its pid and group may be another's by now
	}
	_ = syscall.Kill(-s.pid, syscall.SIGKILL)
	_ = syscall.Kill(s.pid, syscall.SIGKILL)
}

// run carries the session's streams until the command exits, then sends
// its exit status. If the host goes away or abandons the channel, the
// command is killed: a session never outlives its channel.
func (s *session) run(ch *agent.Channel) {
	var copiers sync.WaitGroup
	pump := func(src *os.File, t byte) {
		defer copiers.Done()
		buf := make([]byte, agent.MaxPayload)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if ch.Send(t, buf[:n]) != nil {
					s.kill()
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	if s.tty != nil {
		copiers.Add(1)
		go pump(s.tty, agent.FrameStdout)
	}
	for i, f := range s.outs {
		copiers.Add(1)
		go pump(f, []byte{agent.FrameStdout, agent.FrameStderr}[i])
	}
	go s.input(ch)
	ws := <-s.status
	s.exited.Store(true)
	// Output the command wrote before it ended is still in the pipes; a
	// process it left behind may hold them open, so wait only so long.
	drained := make(chan struct{})
	go func() { copiers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(2 * time.Second):
	}
	s.closeAll()
	code, sig := exitStatus(ws)
	_ = ch.SendJSON(agent.FrameExit, agent.ExitStatus{ExitCode: agent.ExitCodeFor(code, sig), Signal: sig})
}

// input applies what the host sends on the channel: stdin, its end,
// window sizes, signals; an abandoned channel or a lost host kills the
// command.
func (s *session) input(ch *agent.Channel) {
	in := s.stdin
	if s.tty != nil {
		in = s.tty
	}
	for {
		f, err := ch.Recv()
		if err != nil {
			s.kill()
			return
		}
		switch f.Type {
		case agent.FrameStdin:
			if in != nil {
				_, _ = in.Write(f.Payload)
			}
		case agent.FrameEOF:
			if s.tty != nil {
				_, _ = s.tty.Write([]byte{4}) // ^D: end of input for the line discipline
			} else if s.stdin != nil {
				s.stdin.Close()
			}
		case agent.FrameControl:
			var c agent.Control
			if json.Unmarshal(f.Payload, &c) != nil {
				continue
			}
			if c.Rows > 0 && c.Cols > 0 && s.tty != nil {
				_ = unix.IoctlSetWinsize(int(s.tty.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: c.Rows, Col: c.Cols})
			}
			if c.Signal > 0 {
				_ = syscall.Kill(s.pid, syscall.Signal(c.Signal))
			}
		case agent.FrameClose:
			s.kill()
			return
		}
	}
}

// openPTY allocates a pseudo-terminal of rows x cols whose slave belongs to
// uid.
func openPTY(rows, cols uint16, uid uint32) (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/pts/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		if fd, err = unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0); err != nil {
			return nil, nil, fmt.Errorf("opening a pseudo-terminal: %w", err)
		}
	}
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlocking the pseudo-terminal: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("numbering the pseudo-terminal: %w", err)
	}
	name := "/dev/pts/" + strconv.Itoa(n)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("opening %s: %w", name, err)
	}
	_ = unix.Fchown(sfd, int(uid), -1)
	if rows > 0 && cols > 0 {
		_ = unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}
	return master, os.NewFile(uintptr(sfd), name), nil
}

// guestStats reads memory, load and process count from /proc.
func guestStats() agent.Stats {
	var st agent.Stats
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			v, _ := strconv.ParseUint(f[1], 10, 64)
			switch f[0] {
			case "MemTotal:":
				st.MemTotal = v * 1024
			case "MemAvailable:":
				st.MemAvailable = v * 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		for i := 0; i < 3 && i < len(f); i++ {
			st.Load[i], _ = strconv.ParseFloat(f[i], 64)
		}
	}
	st.Uptime = readUptime()
	ents, _ := filepath.Glob("/proc/[0-9]*")
	st.Processes = len(ents)
	return st
}

// oomKills counts the processes the kernel's OOM killer ended since boot:
// from /proc/vmstat when the kernel counts them there, otherwise from the
// kernel log.
func oomKills() int {
	if b, err := os.ReadFile("/proc/vmstat"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				return n
			}
		}
	}
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	n := 0
	buf := make([]byte, 8192)
	for {
		k, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EPIPE) {
			continue // records overwritten while reading
		}
		if err != nil || k <= 0 {
			return n
		}
		if strings.Contains(string(buf[:k]), "Killed process") {
			n++
		}
	}
}

// setTime sets the guest's clock to the host's time (ns since the epoch).
func setTime(ns int64) agent.Reply {
	if ns <= 0 {
		return agent.Reply{Error: fmt.Sprintf("invalid time %d", ns)}
	}
	ts := unix.NsecToTimespec(ns)
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return agent.Reply{Error: fmt.Sprintf("setting the clock: %v", err)}
	}
	return agent.Reply{}
}

// takeSpec hands a template boot the VM's spec (OpSpec): the clock is set
// and the host's entropy added to the random pool first, so the program
// starts with both; the spec goes to run, which goes on with it.
func (s *server) takeSpec(req *agent.OpenRequest) agent.Reply {
	if s.specs == nil || s.spec.Load() != nil {
		return agent.Reply{Error: "this guest has its spec already", ExitCode: 125}
	}
	if req.Spec == nil {
		return agent.Reply{Error: "no spec", ExitCode: 125}
	}
	if err := req.Spec.Validate(); err != nil || req.Spec.Template {
		if err == nil {
			err = errors.New("a template spec")
		}
		return agent.Reply{Error: fmt.Sprintf("refusing the spec: %v", err), ExitCode: 125}
	}
	if req.TimeNanos > 0 {
		if r := setTime(req.TimeNanos); r.Error != "" {
			return r
		}
	}
	if err := reprobeDisks(); err != nil {
		return agent.Reply{Error: err.Error(), ExitCode: 125}
	}
	if p := req.Program; p != nil {
		if err := copyProgram(p); err != nil {
			return agent.Reply{Error: err.Error(), ExitCode: 125}
		}
	}
	if len(req.Entropy) > 0 {
		if err := addEntropy(req.Entropy); err != nil {
			return agent.Reply{Error: err.Error(), ExitCode: 125}
		}
	}
	if !s.spec.CompareAndSwap(nil, req.Spec) {
		return agent.Reply{Error: "this guest has its spec already", ExitCode: 125}
	}
	s.specs <- req.Spec
	return agent.Reply{}
}

// Linux's random ioctls (include/uapi/linux/random.h).
const (
	rndAddEntropy  = 0x40085203 // _IOW('R', 0x03, int[2])
	rndReseedCRNG  = 0x5207     // _IO('R', 0x07)
	maxEntropySize = 4096
)

// addEntropy mixes b into the kernel's random pool, credited as entropy,
// and reseeds the CRNG from it at once: a guest restored from a template
// would otherwise go on from the template's pool, as every other guest
// restored from it does.
func addEntropy(b []byte) error {
	if len(b) > maxEntropySize {
		b = b[:maxEntropySize]
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/urandom: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+(len(b)+3)/4*4)
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("adding the host's entropy: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); e != 0 {
		return fmt.Errorf("reseeding the random generator: %w", e)
	}
	return nil
}

// virtioBlkDriver is where the virtio block driver's devices are bound.
const virtioBlkDriver = "/sys/bus/virtio/drivers/virtio_blk"

// reprobeDisks unbinds every virtio disk from its driver and binds it
// again. A guest restored from a template probed the template's stand-in
// disks at boot: their capacity, read-only flag and first sectors. The
// restored QEMU serves the VM's own disks on the same devices, and a new
// probe reads what they are (the device is reset and its features
// negotiated again). Nothing has a disk open yet: the template's boot
// mounts none.
func reprobeDisks() error {
	devs, err := filepath.Glob(filepath.Join(virtioBlkDriver, "virtio*"))
	if err != nil {
		return err
	}
	for _, d := range devs {
		if err := os.WriteFile(filepath.Join(virtioBlkDriver, "unbind"), []byte(filepath.Base(d)), 0); err != nil {
			return fmt.Errorf("releasing disk %s for a new probe: %w", filepath.Base(d), err)
		}
	}
	for _, d := range devs {
		if err := os.WriteFile(filepath.Join(virtioBlkDriver, "bind"), []byte(filepath.Base(d)), 0); err != nil {
			return fmt.Errorf("probing disk %s again: %w", filepath.Base(d), err)
		}
	}
	return nil
}

// copyProgram writes the first p.Size bytes of the disk with serial
// p.Serial to p.Path (a disk reprobeDisks probed anew: no page of the
// template's stand-in is cached).
func copyProgram(p *agent.ProgramDisk) error {
	if p.Size < 0 || !filepath.IsAbs(p.Path) {
		return fmt.Errorf("program %q: bad size or path", p.Path)
	}
	dev, err := findDisk(p.Serial)
	if err != nil {
		return fmt.Errorf("program disk: %w", err)
	}
	in, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("program disk: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(p.Path), 0o755); err != nil {
		return fmt.Errorf("program: %w", err)
	}
	out, err := os.OpenFile(p.Path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return fmt.Errorf("program: %w", err)
	}
	// Large reads: each is one request to the disk, and a restored guest
	// waits for the program before it starts.
	n, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{io.LimitReader(in, p.Size)}, make([]byte, 1<<20))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != p.Size {
		err = fmt.Errorf("the disk holds %d of its %d bytes", n, p.Size)
	}
	if err != nil {
		return fmt.Errorf("copying the program to %s: %w", p.Path, err)
	}
	return nil
}

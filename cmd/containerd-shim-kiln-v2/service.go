package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	cgstats "github.com/containerd/cgroups/v2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/fifo"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
)

var (
	_     taskAPI.TaskService = (*service)(nil)
	empty                     = &ptypes.Empty{}
)

// flushTimeout bounds how long a task's end waits for the rest of its
// output to reach containerd's fifo (whose reader may be gone).
const flushTimeout = 10 * time.Second

// service is the shim's task service: its tasks are kiln VMs.
type service struct {
	// ctx is the shim's own: long-lived work (log copies, waits, execs)
	// runs under it, not under a request's.
	ctx       context.Context
	id        string
	publisher shim.Publisher
	shutdown  func()
	root      string

	cmu sync.Mutex
	cli *client.Client

	mu    sync.Mutex
	tasks map[string]*kTask

	events chan any
}

func newService(ctx context.Context, id string, publisher shim.Publisher, shutdown func()) (shim.Shim, error) {
	s := &service{
		ctx: ctx, id: id, publisher: publisher, shutdown: shutdown,
		root:   kilnRoot(),
		tasks:  map[string]*kTask{},
		events: make(chan any, 128),
	}
	go s.forward()
	return s, nil
}

// client returns the daemon's client, connecting (and starting a daemon)
// the first time.
func (s *service) client(ctx context.Context) (*client.Client, error) {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if s.cli != nil {
		return s.cli, nil
	}
	c, err := connect(ctx, s.root)
	if err != nil {
		return nil, err
	}
	s.cli = c
	return c, nil
}

// forward publishes events in order. When the shim shuts down (its
// context is done) it publishes what was sent before and closes the
// publisher, which the shim's exit waits for.
func (s *service) forward() {
	ns, _ := namespaces.Namespace(s.ctx)
	ctx := namespaces.WithNamespace(context.Background(), ns)
	publish := func(e any) {
		if err := s.publisher.Publish(ctx, topic(e), e); err != nil {
			log.G(ctx).WithError(err).Error("publishing event")
		}
	}
	for {
		select {
		case e := <-s.events:
			publish(e)
		case <-s.ctx.Done():
			for {
				select {
				case e := <-s.events:
					publish(e)
				default:
					s.publisher.Close()
					return
				}
			}
		}
	}
}

func (s *service) send(e any) {
	select {
	case s.events <- e:
	case <-s.ctx.Done():
	}
}

func topic(e any) string {
	switch e.(type) {
	case *eventstypes.TaskCreate:
		return runtime.TaskCreateEventTopic
	case *eventstypes.TaskStart:
		return runtime.TaskStartEventTopic
	case *eventstypes.TaskOOM:
		return runtime.TaskOOMEventTopic
	case *eventstypes.TaskExit:
		return runtime.TaskExitEventTopic
	case *eventstypes.TaskDelete:
		return runtime.TaskDeleteEventTopic
	case *eventstypes.TaskExecAdded:
		return runtime.TaskExecAddedEventTopic
	case *eventstypes.TaskExecStarted:
		return runtime.TaskExecStartedEventTopic
	case *eventstypes.TaskPaused:
		return runtime.TaskPausedEventTopic
	case *eventstypes.TaskResumed:
		return runtime.TaskResumedEventTopic
	}
	return runtime.TaskUnknownTopic
}

// toGRPC maps kiln's and the shim's errors to containerd's codes.
func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, client.ErrNotFound):
		err = fmt.Errorf("%s: %w", err.Error(), errdefs.ErrNotFound)
	case errors.Is(err, client.ErrConflict):
		err = fmt.Errorf("%s: %w", err.Error(), errdefs.ErrFailedPrecondition)
	case errors.Is(err, client.ErrInvalidArgument):
		err = fmt.Errorf("%s: %w", err.Error(), errdefs.ErrInvalidArgument)
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, client.ErrNoDaemon):
		err = fmt.Errorf("%s: %w", err.Error(), errdefs.ErrUnavailable)
	}
	return errdefs.ToGRPC(err)
}

// proc is what a task's init process and its execs share: stdio paths
// and how the process ended.
type proc struct {
	id                    string // "" for the init process
	stdin, stdout, stderr string
	terminal              bool
	mu                    sync.Mutex
	status                task.Status
	exitStatus            uint32
	exitedAt              time.Time
	exited                chan struct{}
	closeStdin            func()
	// stdinClosed: CloseIO came, maybe before the process started.
	stdinClosed bool
}

func newProc(id, stdin, stdout, stderr string, terminal bool) *proc {
	return &proc{id: id, stdin: stdin, stdout: stdout, stderr: stderr, terminal: terminal,
		status: task.Status_CREATED, exited: make(chan struct{})}
}

func (p *proc) state() (task.Status, uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.exitStatus, p.exitedAt
}

// exit records how the process ended, once; it reports whether this call
// did.
func (p *proc) exit(code int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status == task.Status_STOPPED {
		return false
	}
	p.status, p.exitStatus, p.exitedAt = task.Status_STOPPED, uint32(code), time.Now()
	close(p.exited)
	return true
}

// kTask is one containerd task: a kiln VM.
type kTask struct {
	id     string
	vm     string // the VM's name
	bundle string
	// rootfs is the directory the shim mounted the task's rootfs on, or
	// "" when the spec's root was used as it is.
	rootfs string
	init   *proc
	pid    atomic.Int64 // the VM's QEMU, once started

	mu    sync.Mutex
	execs map[string]*kExec
}

// kExec is a command run in a task's VM.
type kExec struct {
	*proc
	cfg    api.ExecConfig
	mu     sync.Mutex
	stream *client.ExecStream
}

func (s *service) getTask(id string) (*kTask, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "task %q", id)
	}
	return t, nil
}

// lookup finds task id and its process execID ("" for the main program).
func (s *service) lookup(id, execID string) (*kTask, *proc, *kExec, error) {
	t, err := s.getTask(id)
	if err != nil {
		return nil, nil, nil, err
	}
	p, e, err := t.process(execID)
	return t, p, e, err
}

func (t *kTask) process(execID string) (*proc, *kExec, error) {
	if execID == "" {
		return t.init, nil, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.execs[execID]
	if !ok {
		return nil, nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %q of task %q", execID, t.id)
	}
	return e.proc, e, nil
}

// Create creates the task's VM, not started.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	s.mu.Lock()
	_, dup := s.tasks[r.ID]
	s.mu.Unlock()
	if dup {
		return nil, errdefs.ToGRPCf(errdefs.ErrAlreadyExists, "task %q", r.ID)
	}
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotImplemented, "task %q: kiln's shim restores no containerd checkpoint", r.ID)
	}
	if r.Terminal {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "task %q asks for a terminal: kiln gives a VM's main program no tty (run it without one; an exec can have one)", r.ID)
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, toGRPC(err)
	}
	rootDir := ""
	mounted := ""
	if len(r.Rootfs) > 0 {
		rootDir = filepath.Join(r.Bundle, "rootfs")
		if err := os.Mkdir(rootDir, 0o711); err != nil && !os.IsExist(err) {
			return nil, toGRPC(err)
		}
		var ms []mount.Mount
		for _, m := range r.Rootfs {
			ms = append(ms, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
		}
		if err := mount.All(ms, rootDir); err != nil {
			return nil, toGRPC(fmt.Errorf("mounting the task's rootfs on %s: %w", rootDir, err))
		}
		mounted = rootDir
		defer func() {
			if retErr != nil {
				if err := mount.UnmountAll(mounted, 0); err != nil {
					log.G(ctx).WithError(err).Warn("unmounting the task's rootfs")
				}
			}
		}()
	} else {
		if spec.Root == nil || spec.Root.Path == "" {
			return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "task %q has no rootfs mounts and its spec no root.path: kiln needs a root filesystem", r.ID)
		}
		rootDir = spec.Root.Path
		if !filepath.IsAbs(rootDir) {
			rootDir = filepath.Join(r.Bundle, rootDir)
		}
	}
	name := vmName(ns, r.ID)
	cfg, err := vmConfig(spec, name, rootDir)
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "task %q: %v", r.ID, err)
	}
	c, err := s.client(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	if _, err := c.Create(ctx, cfg); err != nil {
		return nil, toGRPC(fmt.Errorf("creating VM %s for task %q: %w", name, r.ID, err))
	}
	t := &kTask{
		id: r.ID, vm: name, bundle: r.Bundle, rootfs: mounted,
		init:  newProc("", r.Stdin, r.Stdout, r.Stderr, false),
		execs: map[string]*kExec{},
	}
	s.mu.Lock()
	s.tasks[r.ID] = t
	s.mu.Unlock()
	s.send(&eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
	})
	return &taskAPI.CreateTaskResponse{}, nil
}

// openOutput opens an output fifo (or file) for writing. A fifo is opened
// read-write, so that the open does not wait for a reader and a reader
// that goes away (ctr run -d) does not end the copy with EPIPE.
func openOutput(path string) (*os.File, error) {
	if path == "" {
		return nil, nil
	}
	st, err := os.Stat(path)
	if err == nil && st.Mode()&os.ModeNamedPipe != 0 {
		return os.OpenFile(path, os.O_RDWR, 0)
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
}

func writerOr(f *os.File) io.Writer {
	if f == nil {
		return io.Discard
	}
	return f
}

// Start boots the task's VM, or runs an exec.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	t, err := s.getTask(r.ID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		return s.startExec(ctx, t, r.ExecID)
	}
	if st, _, _ := t.init.state(); st != task.Status_CREATED {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "task %q is %s, not created", r.ID, st)
	}
	c, err := s.client(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	stdout, err := openOutput(t.init.stdout)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("opening stdout %s: %w", t.init.stdout, err))
	}
	stderr, err := openOutput(t.init.stderr)
	if err != nil {
		if stdout != nil {
			stdout.Close()
		}
		return nil, toGRPC(fmt.Errorf("opening stderr %s: %w", t.init.stderr, err))
	}
	closeOut := func() {
		if stdout != nil {
			stdout.Close()
		}
		if stderr != nil {
			stderr.Close()
		}
	}
	// The wait is in place before the VM starts, as kiln run's: the end
	// of this run is seen however quick it is.
	type waited struct {
		r   api.WaitResponse
		err error
	}
	runCtx, cancel := context.WithCancel(s.ctx)
	waitc := make(chan waited, 1)
	registered := make(chan struct{})
	go func() {
		w, err := c.Wait(runCtx, t.vm, true, func() { close(registered) })
		waitc <- waited{w, err}
	}()
	select {
	case <-registered:
	case w := <-waitc:
		cancel()
		closeOut()
		return nil, toGRPC(fmt.Errorf("waiting for VM %s: %w", t.vm, w.err))
	}
	logsDone := make(chan error, 1)
	go func() {
		logsDone <- s.copyOutput(runCtx, c, t.vm, writerOr(stdout), writerOr(stderr))
	}()
	if err := c.Start(ctx, t.vm); err != nil {
		cancel()
		closeOut()
		return nil, toGRPC(fmt.Errorf("starting VM %s: %w", t.vm, err))
	}
	// A task reported started runs its program: kiln's start returns
	// while the VM boots, and an exec is refused until the program runs.
	v, err := waitStarted(ctx, c, t.vm)
	if err != nil {
		log.G(ctx).WithError(err).Warnf("waiting for VM %s's program to start", t.vm)
	}
	t.pid.Store(int64(v.State.PID))
	t.init.mu.Lock()
	if t.init.status == task.Status_CREATED {
		t.init.status = task.Status_RUNNING
	}
	t.init.mu.Unlock()
	s.send(&eventstypes.TaskStart{ContainerID: t.id, Pid: uint32(t.pid.Load())})
	go func() {
		defer cancel()
		w := <-waitc
		if w.err != nil && runCtx.Err() == nil && !errors.Is(w.err, client.ErrNotFound) {
			// The daemon went away (a restart, a crash): the VM runs on.
			// Wait for its run's end through the daemon that comes back.
			w.r, w.err = s.waitAgain(runCtx, t.vm, w.err)
		}
		code := w.r.ExitCode
		if w.err != nil {
			log.G(s.ctx).WithError(w.err).Errorf("waiting for VM %s", t.vm)
			code = 255
		}
		// All the output is in the fifos before containerd hears of the
		// end: ctr prints it, then exits.
		select {
		case err := <-logsDone:
			if err != nil && !errors.Is(err, context.Canceled) {
				log.G(s.ctx).WithError(err).Warnf("copying the output of VM %s", t.vm)
			}
		case <-time.After(flushTimeout):
			log.G(s.ctx).Warnf("the output of VM %s did not drain within %s", t.vm, flushTimeout)
		}
		closeOut()
		oom := false
		if v, err := c.Inspect(s.ctx, t.vm); err == nil {
			oom = v.State.OOMKilled
		}
		if !t.init.exit(code) {
			return
		}
		if oom {
			s.send(&eventstypes.TaskOOM{ContainerID: t.id})
		}
		_, status, at := t.init.state()
		s.send(&eventstypes.TaskExit{ContainerID: t.id, ID: t.id, Pid: uint32(t.pid.Load()), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)})
	}()
	return &taskAPI.StartResponse{Pid: uint32(t.pid.Load())}, nil
}

// daemonRetry is how often the shim tries again to reach a kiln daemon
// that went away while a task runs; daemonGiveUp is how long it tries.
const (
	daemonRetry  = 250 * time.Millisecond
	daemonGiveUp = 5 * time.Minute
)

// waitAgain waits for the end of the VM's current run after a wait broke
// (err) because the daemon went away: a daemon restarted takes its VMs
// over, and one that does not come back is started (connect). Until the
// daemon answers it retries, for at most daemonGiveUp.
func (s *service) waitAgain(ctx context.Context, vm string, err error) (api.WaitResponse, error) {
	deadline := time.Now().Add(daemonGiveUp)
	for {
		log.G(ctx).WithError(err).Warnf("waiting for VM %s: the kiln daemon went away; waiting again", vm)
		select {
		case <-ctx.Done():
			return api.WaitResponse{}, ctx.Err()
		case <-time.After(daemonRetry):
		}
		c, cerr := connect(ctx, s.root)
		if cerr == nil {
			var w api.WaitResponse
			if w, err = c.Wait(ctx, vm, false, nil); err == nil || errors.Is(err, client.ErrNotFound) || ctx.Err() != nil {
				return w, err
			}
		} else {
			err = cerr
		}
		if time.Now().After(deadline) {
			return api.WaitResponse{}, fmt.Errorf("no kiln daemon to wait through for %s: %w", daemonGiveUp, err)
		}
	}
}

// copyOutput copies the VM's output to the task's stdout and stderr until
// the VM's run is over. When the daemon goes away mid-stream (its stream
// breaks, or ends while the VM still runs), it follows again through the
// daemon that comes back, from the last line copied: lines of that same
// instant already copied are skipped, so none is written twice.
func (s *service) copyOutput(ctx context.Context, c *client.Client, vm string, stdout, stderr io.Writer) error {
	var last time.Time
	atLast := 0 // lines copied whose time is last
	deadline := time.Time{}
	for {
		o := client.LogOptions{Follow: true, Tail: -1}
		skip := 0
		if !last.IsZero() {
			o.Since, skip = last.Format(time.RFC3339Nano), atLast
		}
		reached := false
		err := c.Logs(ctx, vm, o, func(e api.LogEntry) error {
			reached = true
			if skip > 0 && e.Time.Equal(last) {
				skip--
				return nil
			}
			skip = 0
			if e.Time.Equal(last) {
				atLast++
			} else {
				last, atLast = e.Time, 1
			}
			w := stdout
			if e.Stream == "stderr" {
				w = stderr
			}
			_, werr := io.WriteString(w, e.Line)
			return werr
		})
		if ctx.Err() != nil || errors.Is(err, client.ErrNotFound) {
			return err
		}
		if err == nil || reached {
			deadline = time.Time{} // a daemon answered: the wait for one starts again
		}
		if err == nil {
			// The stream ended: the VM's run is over, or its daemon went.
			v, ierr := c.Inspect(ctx, vm)
			if ierr == nil && (v.State.Status == "exited" || v.State.Status == "dead") || errors.Is(ierr, client.ErrNotFound) {
				return nil
			}
		} else {
			var ce *client.Error
			if errors.As(err, &ce) {
				return err // the daemon's own answer: following again would get it again
			}
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(daemonGiveUp)
		} else if time.Now().After(deadline) {
			return fmt.Errorf("following VM %s's output: no kiln daemon for %s: %w", vm, daemonGiveUp, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(daemonRetry):
		}
		if nc, cerr := connect(ctx, s.root); cerr == nil {
			c = nc
		}
	}
}

// startWait bounds how long Start waits for the VM's program to start,
// past kiln's own boot timeout.
const startWait = 2 * time.Minute

// waitStarted waits until the VM's program has started (the daemon then
// records the guest's uptime at that moment, BootUptime) or the VM's run
// ended, and returns the VM as it then is.
func waitStarted(ctx context.Context, c *client.Client, vm string) (api.VM, error) {
	deadline := time.Now().Add(startWait)
	for {
		v, err := c.Inspect(ctx, vm)
		if err != nil {
			return v, err
		}
		st := v.State.Status
		if v.State.BootUptime > 0 || st != "starting" && st != "running" {
			return v, nil
		}
		if time.Now().After(deadline) {
			return v, fmt.Errorf("VM %s's program did not start within %s", vm, startWait)
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *service) startExec(ctx context.Context, t *kTask, execID string) (*taskAPI.StartResponse, error) {
	p, e, err := t.process(execID)
	if err != nil {
		return nil, err
	}
	if st, _, _ := t.init.state(); st != task.Status_RUNNING {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "task %q is %s: an exec needs it running", t.id, st)
	}
	if st, _, _ := p.state(); st != task.Status_CREATED {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %q of task %q is %s, not created", execID, t.id, st)
	}
	c, err := s.client(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	stdout, err := openOutput(p.stdout)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("opening stdout %s: %w", p.stdout, err))
	}
	var stderr *os.File
	if !p.terminal {
		if stderr, err = openOutput(p.stderr); err != nil {
			if stdout != nil {
				stdout.Close()
			}
			return nil, toGRPC(fmt.Errorf("opening stderr %s: %w", p.stderr, err))
		}
	}
	closeOut := func() {
		if stdout != nil {
			stdout.Close()
		}
		if stderr != nil {
			stderr.Close()
		}
	}
	// The stream outlives this request.
	stream, err := c.Exec(s.ctx, t.vm, e.cfg)
	if err != nil {
		closeOut()
		return nil, toGRPC(fmt.Errorf("exec %q in VM %s: %w", execID, t.vm, err))
	}
	var stdin io.Reader
	p.mu.Lock()
	stdinClosed := p.stdinClosed
	p.mu.Unlock()
	if p.stdin != "" && stdinClosed {
		// ctr closes stdin as soon as its own ends, which can be before
		// the start: the command gets an empty one.
		stdin = strings.NewReader("")
	} else if p.stdin != "" {
		// Opened in the background: the fifo's writer (ctr) may open it
		// later; CloseIO or the end of the exec closes it.
		f, err := fifo.OpenFifo(s.ctx, p.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			stream.Close()
			closeOut()
			return nil, toGRPC(fmt.Errorf("opening stdin %s: %w", p.stdin, err))
		}
		stdin = f
		var once sync.Once
		p.mu.Lock()
		p.closeStdin = func() { once.Do(func() { f.Close() }) }
		p.mu.Unlock()
	}
	e.mu.Lock()
	e.stream = stream
	e.mu.Unlock()
	p.mu.Lock()
	p.status = task.Status_RUNNING
	p.mu.Unlock()
	s.send(&eventstypes.TaskExecStarted{ContainerID: t.id, ExecID: execID, Pid: uint32(t.pid.Load())})
	go func() {
		ex, err := stream.Stream(stdin, writerOr(stdout), writerOr(stderr))
		code := ex.ExitCode
		if err != nil {
			log.G(s.ctx).WithError(err).Errorf("exec %q in VM %s", execID, t.vm)
			code = 255
		} else if ex.Error != "" {
			log.G(s.ctx).Warnf("exec %q in VM %s: %s", execID, t.vm, ex.Error)
		}
		stream.Close()
		closeOut()
		p.mu.Lock()
		cs := p.closeStdin
		p.mu.Unlock()
		if cs != nil {
			cs()
		}
		if !p.exit(code) {
			return
		}
		_, status, at := p.state()
		s.send(&eventstypes.TaskExit{ContainerID: t.id, ID: execID, Pid: uint32(t.pid.Load()), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)})
	}()
	return &taskAPI.StartResponse{Pid: uint32(t.pid.Load())}, nil
}

// Exec records an exec, to be started by Start.
func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	t, err := s.getTask(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Spec == nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "exec %q of task %q has no process spec", r.ExecID, r.ID)
	}
	cfg, err := execConfig(r.Spec.GetValue(), r.Terminal, r.Stdin != "")
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "exec %q of task %q: %v", r.ExecID, r.ID, err)
	}
	t.mu.Lock()
	if _, ok := t.execs[r.ExecID]; ok {
		t.mu.Unlock()
		return nil, errdefs.ToGRPCf(errdefs.ErrAlreadyExists, "exec %q of task %q", r.ExecID, r.ID)
	}
	t.execs[r.ExecID] = &kExec{proc: newProc(r.ExecID, r.Stdin, r.Stdout, r.Stderr, r.Terminal), cfg: cfg}
	t.mu.Unlock()
	s.send(&eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return empty, nil
}

// Kill signals the task's program (through the daemon) or an exec.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	t, p, e, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, _, _ := p.state()
	switch st {
	case task.Status_STOPPED:
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "process %q of task %q already finished", r.ExecID, r.ID)
	case task.Status_CREATED:
		// Nothing runs yet: the process ends as killed by the signal.
		if p.exit(128 + int(r.Signal)) {
			_, status, at := p.state()
			s.send(&eventstypes.TaskExit{ContainerID: t.id, ID: orID(r.ExecID, t.id), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)})
		}
		return empty, nil
	}
	if e != nil {
		e.mu.Lock()
		stream := e.stream
		e.mu.Unlock()
		if err := stream.Signal(int(r.Signal)); err != nil {
			return nil, toGRPC(fmt.Errorf("signalling exec %q: %w", r.ExecID, err))
		}
		return empty, nil
	}
	c, err := s.client(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := c.Kill(ctx, t.vm, strconv.Itoa(int(r.Signal))); err != nil {
		if errors.Is(err, client.ErrConflict) {
			// The VM stopped meanwhile.
			return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "task %q already finished", r.ID)
		}
		return nil, toGRPC(fmt.Errorf("signal %d to VM %s: %w", r.Signal, t.vm, err))
	}
	if r.Signal != uint32(syscall.SIGKILL) {
		// kiln lets a paused VM run again to deliver a signal.
		p.mu.Lock()
		if p.status == task.Status_PAUSED {
			p.status = task.Status_RUNNING
		}
		p.mu.Unlock()
	}
	return empty, nil
}

func orID(execID, id string) string {
	if execID != "" {
		return execID
	}
	return id
}

// Delete removes an exec, or the task's VM (and unmounts its rootfs).
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	t, err := s.getTask(r.ID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		p, _, err := t.process(r.ExecID)
		if err != nil {
			return nil, err
		}
		st, status, at := p.state()
		if st == task.Status_RUNNING {
			return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %q of task %q is running", r.ExecID, r.ID)
		}
		t.mu.Lock()
		delete(t.execs, r.ExecID)
		t.mu.Unlock()
		return &taskAPI.DeleteResponse{Pid: uint32(t.pid.Load()), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}
	st, _, _ := t.init.state()
	if st == task.Status_RUNNING {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "task %q is running: kill it first", r.ID)
	}
	c, err := s.client(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := c.Remove(ctx, t.vm, client.RemoveOptions{Force: true, Volumes: true}); err != nil && !errors.Is(err, client.ErrNotFound) {
		return nil, toGRPC(fmt.Errorf("removing VM %s: %w", t.vm, err))
	}
	if t.rootfs != "" {
		if err := mount.UnmountAll(t.rootfs, 0); err != nil {
			log.G(ctx).WithError(err).Warnf("unmounting %s", t.rootfs)
		}
	}
	if st == task.Status_CREATED {
		t.init.exit(128 + int(syscall.SIGKILL))
	}
	s.mu.Lock()
	delete(s.tasks, r.ID)
	s.mu.Unlock()
	_, status, at := t.init.state()
	s.send(&eventstypes.TaskDelete{ContainerID: t.id, ID: t.id, Pid: uint32(t.pid.Load()), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)})
	return &taskAPI.DeleteResponse{Pid: uint32(t.pid.Load()), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// State reports a process's status.
func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	t, p, _, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, status, at := p.state()
	return &taskAPI.StateResponse{
		ID: orID(r.ExecID, t.id), Bundle: t.bundle, Pid: uint32(t.pid.Load()), Status: st,
		Stdin: p.stdin, Stdout: p.stdout, Stderr: p.stderr, Terminal: p.terminal,
		ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at), ExecID: r.ExecID,
	}, nil
}

// Wait waits for a process to end.
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, _, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, toGRPC(ctx.Err())
	}
	_, status, at := p.state()
	return &taskAPI.WaitResponse{ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// Pids lists the task's processes as the host sees them: its VM's QEMU.
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	t, err := s.getTask(r.ID)
	if err != nil {
		return nil, err
	}
	if t.pid.Load() == 0 {
		return &taskAPI.PidsResponse{}, nil
	}
	return &taskAPI.PidsResponse{Processes: []*task.ProcessInfo{{Pid: uint32(t.pid.Load())}}}, nil
}

// CloseIO closes an exec's stdin.
func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*ptypes.Empty, error) {
	_, p, _, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if !r.Stdin {
		return empty, nil
	}
	p.mu.Lock()
	p.stdinClosed = true
	cs := p.closeStdin
	p.mu.Unlock()
	if cs != nil {
		cs()
	}
	return empty, nil
}

// ResizePty resizes an exec's tty.
func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	_, _, e, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if e == nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "task %q's main program has no tty to resize", r.ID)
	}
	e.mu.Lock()
	stream := e.stream
	e.mu.Unlock()
	if stream == nil || !e.terminal {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %q of task %q has no running tty", r.ExecID, r.ID)
	}
	if err := stream.Resize(uint16(r.Height), uint16(r.Width)); err != nil {
		return nil, toGRPC(err)
	}
	return empty, nil
}

// Connect reports the shim's and the task's pids.
func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	var pid int
	if t, err := s.getTask(r.ID); err == nil {
		pid = int(t.pid.Load())
	}
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: uint32(pid)}, nil
}

// Shutdown ends the shim once it has no task left.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.mu.Lock()
	n := len(s.tasks)
	s.mu.Unlock()
	if n > 0 {
		return empty, nil
	}
	s.shutdown()
	return empty, nil
}

// Stats reports the task's VM as containerd's cgroup v2 metrics: the
// memory and pids of the VM's cgroup on the host (QEMU and the guest's
// memory) when the daemon confines it in one, else the guest's own view
// of its memory.
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	t, err := s.getTask(r.ID)
	if err != nil {
		return nil, err
	}
	c, err := s.client(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	v, err := c.Inspect(ctx, t.vm)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("inspecting VM %s: %w", t.vm, err))
	}
	m, err := metrics(ctx, c, v)
	if err != nil {
		return nil, toGRPC(err)
	}
	data, err := typeurl.MarshalAny(m)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &taskAPI.StatsResponse{Stats: protobuf.FromAny(data)}, nil
}

func metrics(ctx context.Context, c *client.Client, v api.VM) (*cgstats.Metrics, error) {
	if !v.State.Running {
		return nil, fmt.Errorf("VM %s is %s: %w", v.Name, v.State.Status, errdefs.ErrFailedPrecondition)
	}
	if conf := v.Confinement; conf != nil && conf.Cgroup != nil {
		cg := conf.Cgroup
		return &cgstats.Metrics{
			Memory:       &cgstats.MemoryStat{Usage: nonNeg(cg.MemoryUsage), UsageLimit: nonNeg(cg.MemoryLimit)},
			Pids:         &cgstats.PidsStat{Current: nonNeg(cg.Pids), Limit: nonNeg(cg.PidsLimit)},
			MemoryEvents: &cgstats.MemoryEvents{OomKill: nonNeg(cg.OOMKills)},
		}, nil
	}
	st, err := c.Stats(ctx, v.Name)
	if err != nil {
		return nil, fmt.Errorf("stats of VM %s: %w", v.Name, err)
	}
	return &cgstats.Metrics{
		Memory: &cgstats.MemoryStat{Usage: st.MemTotal - min(st.MemAvailable, st.MemTotal), UsageLimit: st.MemTotal},
		Pids:   &cgstats.PidsStat{Current: uint64(max(st.Processes, 0))},
	}, nil
}

func nonNeg(n int64) uint64 { return uint64(max(n, 0)) }

// Pause freezes the task's VM (kiln pause): its guest's vCPUs stop.
func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	return s.setPaused(ctx, r.ID, true)
}

// Resume lets the task's paused VM run again (kiln unpause).
func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	return s.setPaused(ctx, r.ID, false)
}

func (s *service) setPaused(ctx context.Context, id string, pause bool) (*ptypes.Empty, error) {
	t, p, _, err := s.lookup(id, "")
	if err != nil {
		return nil, err
	}
	c, err := s.client(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	from, to, call := task.Status_RUNNING, task.Status_PAUSED, c.Pause
	if !pause {
		from, to, call = task.Status_PAUSED, task.Status_RUNNING, c.Unpause
	}
	if st, _, _ := p.state(); st != from {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "task %q is %s, not %s", id, st, from)
	}
	if err := call(ctx, t.vm); err != nil {
		return nil, toGRPC(err)
	}
	p.mu.Lock()
	if p.status == from {
		p.status = to
	}
	p.mu.Unlock()
	if pause {
		s.send(&eventstypes.TaskPaused{ContainerID: id})
	} else {
		s.send(&eventstypes.TaskResumed{ContainerID: id})
	}
	return empty, nil
}

// Checkpoint is not implemented: kiln's checkpoints are its own (kiln
// checkpoint), not containerd's.
func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	return nil, errdefs.ToGRPCf(errdefs.ErrNotImplemented, "checkpoint: use kiln checkpoint on the task's VM")
}

// Update is not implemented: a VM's memory and CPUs are fixed at create.
func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	return nil, errdefs.ToGRPCf(errdefs.ErrNotImplemented, "update: a kiln VM's resources are fixed when it is created")
}

// StartShim starts the shim's server process for a task (containerd's
// "start" action) and returns its ttrpc address.
func (s *service) StartShim(ctx context.Context, opts shim.StartOpts) (_ string, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	address, err := shim.SocketAddress(ctx, opts.Address, opts.ID)
	if err != nil {
		return "", err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("creating the shim's socket: %w", err)
		}
		if shim.CanConnect(address) {
			// A shim serves this task already.
			if err := shim.WriteAddress("address", address); err != nil {
				return "", err
			}
			return address, nil
		}
		if err := shim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("removing a stale shim socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("creating the shim's socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			_ = shim.RemoveSocket(address)
		}
	}()
	if err := shim.WriteAddress("address", address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	args := []string{"-namespace", ns, "-id", opts.ID, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = os.Environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("starting the shim's server: %w", err)
	}
	go cmd.Wait()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		return "", fmt.Errorf("adjusting the shim's OOM score: %w", err)
	}
	return address, nil
}

// Cleanup is containerd's "delete" action, run in the bundle when the
// shim's server is gone: the task's VM is removed and its rootfs
// unmounted.
func (s *service) Cleanup(ctx context.Context) (*taskAPI.DeleteResponse, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	name := vmName(ns, s.id)
	if !hasVMs(s.root) {
		// No VM to remove (a task refused before its VM was made): no
		// daemon is started for nothing.
	} else if c, err := connect(ctx, s.root); err != nil {
		log.G(ctx).WithError(err).Warnf("removing VM %s", name)
	} else if err := c.Remove(ctx, name, client.RemoveOptions{Force: true, Volumes: true}); err != nil && !errors.Is(err, client.ErrNotFound) {
		log.G(ctx).WithError(err).Warnf("removing VM %s", name)
	}
	if err := mount.UnmountAll(filepath.Join(cwd, "rootfs"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("unmounting the task's rootfs")
	}
	return &taskAPI.DeleteResponse{ExitedAt: protobuf.ToTimestamp(time.Now()), ExitStatus: 128 + uint32(syscall.SIGKILL)}, nil
}

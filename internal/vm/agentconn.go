package vm

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/unixsock"
)

// agentLink is the one connection to a running VM's guest agent. QEMU's
// socket chardev serves one client at a time, so the process that owns
// the VM (the daemon) owns the connection and multiplexes every stop,
// signal, exec and copy onto it; it is dialled on first use and again
// after it broke (the VM restarted, or the daemon did).
type agentLink struct {
	mu sync.Mutex
	c  *agent.Client
}

// Agent returns the connection to the VM's guest agent, dialling it if
// needed. A VM that is not running is an ErrConflict.
func (vm *VM) Agent() (*agent.Client, error) { return vm.agent(5 * time.Second) }

// agent is Agent with hello as the bound on the guest's hello.
func (vm *VM) agent(hello time.Duration) (*agent.Client, error) {
	if m := vm.current(); m == nil || !m.Info().Running {
		return nil, fmt.Errorf("VM %s is not running: %w", vm.Name, errdefs.ErrConflict)
	}
	l := &vm.link
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c != nil {
		select {
		case <-l.c.Done():
			l.c = nil
		default:
			return l.c, nil
		}
	}
	var conn net.Conn
	err := unixsock.WithPath(filepath.Join(vm.Dir, agentSock), func(p string) error {
		var err error
		conn, err = net.DialTimeout("unix", p, 2*time.Second)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to the guest agent of VM %s: %w", vm.Name, err)
	}
	c, err := agent.NewClient(conn, hello)
	if err != nil {
		return nil, fmt.Errorf("VM %s: %w", vm.Name, err)
	}
	l.c = c
	return c, nil
}

// closeAgent drops the connection (the VM ended).
func (vm *VM) closeAgent() {
	l := &vm.link
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c != nil {
		l.c.Close()
		l.c = nil
	}
}

// agentDo runs a request answered by a Reply alone.
func (vm *VM) agentDo(req agent.OpenRequest) (*agent.Reply, error) {
	c, err := vm.Agent()
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// Stats asks the guest for its memory and load.
func (vm *VM) Stats() (*agent.Stats, error) {
	r, err := vm.agentDo(agent.OpenRequest{Op: agent.OpStats})
	if err != nil {
		return nil, err
	}
	if r.Stats == nil {
		return nil, fmt.Errorf("VM %s: the guest agent's stats reply has no stats", vm.Name)
	}
	return r.Stats, nil
}

// Top asks the guest for its processes (as many as fit in one frame;
// truncated says some did not). What it answers is the guest's word.
func (vm *VM) Top() ([]agent.Process, bool, error) {
	r, err := vm.agentDo(agent.OpenRequest{Op: agent.OpTop})
	if err != nil {
		return nil, false, err
	}
	return r.Processes, r.Truncated, nil
}

// ExecError is a command the guest could not run; Code is docker's exit
// code for it (126 not executable, 127 not found, 125 otherwise).
type ExecError struct {
	Code int
	Msg  string
}

func (e *ExecError) Error() string { return e.Msg }

// Session is a channel to the guest agent: an exec'd command or a copy.
type Session struct {
	ch  *agent.Channel
	PID int
}

// Exec runs a command in the VM. The command has started when it returns;
// a command that cannot run is an *ExecError.
func (vm *VM) Exec(req agent.ExecRequest) (*Session, error) {
	return vm.open(agent.OpenRequest{Op: agent.OpExec, Exec: &req})
}

// CopyOut streams path in the guest as a tar archive (Recv's stdout
// frames, then an exit).
func (vm *VM) CopyOut(path string) (*Session, error) {
	return vm.open(agent.OpenRequest{Op: agent.OpCopyOut, Path: path})
}

// CopyIn extracts the tar archive sent on the session (Write, then
// CloseInput) into path in the guest, as docker's cp does.
func (vm *VM) CopyIn(path string) (*Session, error) {
	return vm.open(agent.OpenRequest{Op: agent.OpCopyIn, Path: path})
}

func (vm *VM) open(req agent.OpenRequest) (*Session, error) {
	c, err := vm.Agent()
	if err != nil {
		return nil, err
	}
	ch, r, err := c.Open(req)
	if err != nil {
		return nil, fmt.Errorf("VM %s: %w", vm.Name, err)
	}
	if r.Error != "" {
		if req.Op == agent.OpExec {
			return nil, &ExecError{Code: r.ExitCode, Msg: r.Error}
		}
		return nil, fmt.Errorf("VM %s: %s: %w", vm.Name, r.Error, errdefs.ErrNotFound)
	}
	return &Session{ch: ch, PID: r.PID}, nil
}

// Recv returns the next frame from the guest: stdout, stderr, or the exit
// (after which the session is over).
func (s *Session) Recv() (agent.Frame, error) {
	f, err := s.ch.Recv()
	if err != nil {
		return f, fmt.Errorf("the connection to the guest agent was lost: %w", err)
	}
	return f, nil
}

// Write sends stdin; it waits while the guest's window is full.
func (s *Session) Write(p []byte) (int, error) {
	if err := s.ch.Send(agent.FrameStdin, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// CloseInput ends the command's stdin.
func (s *Session) CloseInput() error { return s.ch.Send(agent.FrameEOF, nil) }

// Control resizes the command's tty or signals it.
func (s *Session) Control(c agent.Control) error { return s.ch.SendJSON(agent.FrameControl, c) }

// Close ends the session; a command still running is killed.
func (s *Session) Close() {
	_ = s.ch.Send(agent.FrameClose, nil)
	s.ch.Close()
}

// OOMKilled reports whether the last run's exit record says the guest's
// kernel killed a process for lack of memory.
func (vm *VM) OOMKilled() bool {
	data, err := vm.readStatus()
	if err != nil {
		return false
	}
	recs, _ := agent.ParseRecords(data)
	for _, r := range recs {
		if r.Kind == agent.KindExit {
			return r.OOMKilled
		}
	}
	return false
}

// ParseExit decodes an exit frame.
func ParseExit(f agent.Frame) (agent.ExitStatus, error) {
	var e agent.ExitStatus
	if err := json.Unmarshal(f.Payload, &e); err != nil {
		return e, errors.New("malformed exit status from the guest agent")
	}
	return e, nil
}

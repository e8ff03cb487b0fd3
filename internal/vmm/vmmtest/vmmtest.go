// Package vmmtest is a fake vmm.Backend for the runtime's unit tests: it
// plays a guest without any monitor process. A started fake machine serves
// the VM's ports as kiln's runtime expects of a monitor (it listens on the
// socket ports, the status port among them, and writes into the output
// FIFOs) and follows the Script the test gives it: report started, print
// output, exit with a code after a while, hang in boot, crash, refuse or
// hold up its start.
//
// The guest agent (the control socket) is not played: requests to it fail
// at once, so a graceful stop falls back to the backend's Stop, as it does
// for a guest whose agent does not answer.
package vmmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/unixsock"
	"kiln.dev/kiln/internal/vmm"
)

// Script is how one run of a fake VM goes.
type Script struct {
	// Block, if not nil, holds Start until it is closed (or Start's
	// context is done): a monitor slow to come up.
	Block <-chan struct{}
	// StartErr fails Start: the monitor would not come up.
	StartErr error
	// Hang: the guest never reports that its program started, and the
	// run lasts until it is stopped or killed (a boot that hangs).
	Hang bool
	// Console is written to the serial console as the guest boots.
	Console string
	// Stdout and Stderr are the program's output, written once it
	// started.
	Stdout, Stderr string
	// RunFor is how long the program runs once started; Forever runs it
	// until the VM is stopped or killed.
	RunFor time.Duration
	// ExitCode is what the program exits with after RunFor.
	ExitCode int
	// Crash: after RunFor the monitor dies without the guest reporting
	// how its program ended.
	Crash bool
}

// Forever is a RunFor that does not end.
const Forever time.Duration = -1

// pidBase is above any PID Linux gives (pid_max is at most 2^22): a fake
// PID is never a real process's.
const pidBase = 1 << 22

// Backend is the fake backend. Its zero value runs every VM Forever; set
// Script to choose each run's script. Its machines outlive the runtime
// that started them, as monitors outlive a daemon: a runtime made later
// with the same Backend attaches to them.
type Backend struct {
	// Script returns the script of VM id's run'th start (from 0).
	Script func(id string, run int) Script

	mu      sync.Mutex
	runs    map[string]int
	live    map[string]*Machine
	nextPID int
}

var _ vmm.Backend = (*Backend)(nil)

// Name is "fake".
func (b *Backend) Name() string { return "fake" }

// Prepare gives cfg a command line and a binary; every VM fits.
func (b *Backend) Prepare(cfg *vmm.Config) error {
	if cfg.Binary == "" {
		cfg.Binary = "vmmtest"
	}
	cfg.Cmdline = "console=ttyS0"
	return nil
}

// New returns a fake machine following the script of this run.
func (b *Backend) New(cfg vmm.Config, log *slog.Logger) (vmm.VMM, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.runs == nil {
		b.runs, b.live = map[string]int{}, map[string]*Machine{}
	}
	run := b.runs[cfg.ID]
	b.runs[cfg.ID]++
	s := Script{RunFor: Forever}
	if b.Script != nil {
		s = b.Script(cfg.ID, run)
	}
	b.nextPID++
	return &Machine{b: b, cfg: cfg, script: s, pid: pidBase + b.nextPID, end: make(chan struct{})}, nil
}

// Attach returns VM cfg.ID's machine while it runs.
func (b *Backend) Attach(cfg vmm.Config, log *slog.Logger) (vmm.VMM, error) {
	if m := b.Machine(cfg.ID); m != nil {
		return m, nil
	}
	return nil, fmt.Errorf("fake VM %s: %w", cfg.ID, vmm.ErrNotRunning)
}

// Reap kills VM id's machine if it runs.
func (b *Backend) Reap(dir, id string) (int, error) {
	m := b.Machine(id)
	if m == nil {
		return 0, nil
	}
	return m.pid, m.Kill()
}

// Machine returns VM id's running machine, or nil.
func (b *Backend) Machine(id string) *Machine {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.live[id]
}

// Starts returns how many runs of VM id were made.
func (b *Backend) Starts(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.runs[id]
}

// Running returns how many machines run.
func (b *Backend) Running() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.live)
}

// Machine is one fake monitor.
type Machine struct {
	b      *Backend
	cfg    vmm.Config
	script Script
	pid    int

	endOnce sync.Once
	end     chan struct{} // closed to end the run (Stop, Kill)

	mu        sync.Mutex
	done      chan struct{} // closed when the run has ended; nil before Start
	listeners []net.Listener
	files     []*os.File
	conn      net.Conn // the runtime's connection to the status port
}

var _ vmm.VMM = (*Machine)(nil)

// Start plays the monitor coming up: it listens on the socket ports, opens
// the output FIFOs and starts the guest's script.
func (m *Machine) Start(ctx context.Context) error {
	if m.script.Block != nil {
		select {
		case <-m.script.Block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if m.script.StartErr != nil {
		return m.script.StartErr
	}
	var status net.Listener
	for _, p := range m.cfg.Ports {
		switch {
		case p.Socket != "":
			if p.Name == agent.PortControl {
				continue // the agent is not played: dialling it fails
			}
			os.Remove(p.Socket)
			var l net.Listener
			err := unixsock.WithPath(p.Socket, func(p string) error {
				var err error
				l, err = net.Listen("unix", p)
				return err
			})
			if err != nil {
				m.closeAll()
				return err
			}
			m.listeners = append(m.listeners, l)
			if p.Name == agent.PortStatus {
				status = l
			}
		case p.Pipe != "":
			if err := vmm.MakePipe(p.Pipe); err != nil {
				m.closeAll()
				return err
			}
			f, err := os.OpenFile(p.Pipe+".out", os.O_RDWR, 0)
			if err != nil {
				m.closeAll()
				return err
			}
			m.files = append(m.files, f)
		}
	}
	done := make(chan struct{})
	m.mu.Lock()
	m.done = done
	m.mu.Unlock()
	m.b.mu.Lock()
	m.b.live[m.cfg.ID] = m
	m.b.mu.Unlock()
	go m.guest(status, done)
	return nil
}

// guest follows the script, then ends the run.
func (m *Machine) guest(status net.Listener, done chan struct{}) {
	defer func() {
		m.closeAll()
		m.b.mu.Lock()
		if m.b.live[m.cfg.ID] == m {
			delete(m.b.live, m.cfg.ID)
		}
		m.b.mu.Unlock()
		close(done)
	}()
	s := m.script
	if s.Console != "" {
		if f, err := os.OpenFile(vmm.ConsoleFIFO(m.cfg.Dir), os.O_RDWR, 0); err == nil {
			f.WriteString(s.Console)
			f.Close()
		}
	}
	if s.Hang {
		<-m.end
		return
	}
	if !m.send(status, agent.Record{Version: agent.Version, Kind: agent.KindStarted, PID: 1, Uptime: 0.25}) {
		return
	}
	m.output(agent.PortStdout, s.Stdout)
	m.output(agent.PortStderr, s.Stderr)
	if s.RunFor >= 0 {
		t := time.NewTimer(s.RunFor)
		defer t.Stop()
		select {
		case <-t.C:
		case <-m.end:
			return
		}
	} else {
		<-m.end
		return
	}
	if s.Crash {
		return
	}
	m.send(status, agent.Record{Version: agent.Version, Kind: agent.KindExit, ExitCode: s.ExitCode})
}

// output writes s into the FIFO of the pipe port named name.
func (m *Machine) output(name, s string) {
	if s == "" {
		return
	}
	for _, p := range m.cfg.Ports {
		if p.Name == name && p.Pipe != "" {
			// Opened beside the FIFO's readers (the runtime's collector,
			// and the machine's own read-write end): it never waits.
			if f, err := os.OpenFile(p.Pipe+".out", os.O_WRONLY, 0); err == nil {
				f.WriteString(s)
				f.Close()
			}
		}
	}
}

// send writes a record on the status port, waiting while no one is
// connected as a guest's write does; false when the run ended first.
func (m *Machine) send(l net.Listener, r agent.Record) bool {
	if l == nil {
		return true
	}
	b, _ := json.Marshal(r)
	b = append(b, '\n')
	for {
		m.mu.Lock()
		conn := m.conn
		m.mu.Unlock()
		if conn == nil {
			c, err := l.Accept() // ends when the run's end closes l
			if err != nil {
				return false
			}
			m.mu.Lock()
			m.conn, conn = c, c
			m.mu.Unlock()
		}
		if _, err := conn.Write(b); err == nil {
			return true
		}
		conn.Close()
		m.mu.Lock()
		m.conn = nil
		m.mu.Unlock()
		select {
		case <-m.end:
			return false
		default:
		}
	}
}

func (m *Machine) closeAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.listeners {
		l.Close()
	}
	for _, f := range m.files {
		f.Close()
	}
	if m.conn != nil {
		m.conn.Close()
	}
	m.listeners, m.files, m.conn = nil, nil, nil
}

// Wait blocks until the run has ended or ctx is done.
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

// Stop ends the run, as a monitor told to quit.
func (m *Machine) Stop(ctx context.Context) error { return m.Kill() }

// Kill ends the run at once and waits for it to be over.
func (m *Machine) Kill() error {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	if done == nil {
		return vmm.ErrNotRunning
	}
	m.endOnce.Do(func() {
		close(m.end)
		m.closeAll() // wakes an Accept
	})
	<-done
	return nil
}

// Info describes the fake monitor.
func (m *Machine) Info() vmm.Info {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	running := false
	if done != nil {
		select {
		case <-done:
		default:
			running = true
		}
	}
	return vmm.Info{Backend: "fake", PID: m.pid, Running: running, Accel: m.cfg.Accel, Argv: []string{"vmmtest", m.cfg.ID}}
}

// ErrRefused is a StartErr for scripts.
var ErrRefused = errors.New("vmmtest: the monitor refused to start")

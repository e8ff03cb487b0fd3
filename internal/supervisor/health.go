package supervisor

import (
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/vm"
)

// Health statuses, as docker's.
const (
	HealthNone      = "none"
	HealthStarting  = "starting"
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// EventHealthStatus prefixes the health events ("health_status: healthy").
const EventHealthStatus = "health_status"

// Health check defaults, as docker's.
const (
	DefaultHealthInterval = 30 * time.Second
	DefaultHealthTimeout  = 30 * time.Second
	DefaultHealthRetries  = 3
	healthLogLen          = 5
	healthOutputMax       = 4096
)

// HealthResult is one probe's outcome.
type HealthResult struct {
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	ExitCode int       `json:"exitCode"`
	Output   string    `json:"output"`
}

// Health is a VM's health as its checks found it.
type Health struct {
	Status        string         `json:"status"`
	FailingStreak int            `json:"failingStreak"`
	Log           []HealthResult `json:"log,omitempty"`
}

// healthState is the health of a VM's current run. It lives in the
// daemon only: after a daemon restart a VM's health starts again.
type healthState struct {
	mu sync.Mutex
	h  Health
}

func (hs *healthState) snapshot() *Health {
	if hs == nil {
		return nil
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	h := hs.h
	h.Log = append([]HealthResult(nil), hs.h.Log...)
	return &h
}

// record adds a result and returns the new status and whether it changed.
// Failures within the start period do not count, unless the VM was
// healthy already.
func (hs *healthState) record(r HealthResult, retries int, inStart bool) (string, bool) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.h.Log = append(hs.h.Log, r)
	if len(hs.h.Log) > healthLogLen {
		hs.h.Log = hs.h.Log[len(hs.h.Log)-healthLogLen:]
	}
	old := hs.h.Status
	if r.ExitCode == 0 {
		hs.h.Status, hs.h.FailingStreak = HealthHealthy, 0
	} else if !inStart || old == HealthHealthy {
		hs.h.FailingStreak++
		if hs.h.FailingStreak >= retries {
			hs.h.Status = HealthUnhealthy
		}
	}
	return hs.h.Status, hs.h.Status != old
}

// healthCommand is the argv a check runs.
func healthCommand(test []string) []string {
	if test[0] == "CMD-SHELL" {
		return []string{"/bin/sh", "-c", strings.Join(test[1:], " ")}
	}
	return test[1:]
}

// runHealth checks a run of a VM until it ends (done), from when its
// program started, and acts on an unhealthy verdict as the VM's options
// say.
func (s *Supervisor) runHealth(m *managed, machine *vm.VM, done chan struct{}) {
	cfg := m.spec.Healthcheck
	if !vm.HealthEnabled(cfg) {
		return
	}
	hs := &healthState{h: Health{Status: HealthStarting}}
	m.mu.Lock()
	if m.runDone != done {
		m.mu.Unlock()
		return
	}
	m.health = hs
	onFailure := m.opts.HealthOnFailure
	m.mu.Unlock()
	interval, timeout, retries := time.Duration(cfg.Interval), time.Duration(cfg.Timeout), cfg.Retries
	if interval == 0 {
		interval = DefaultHealthInterval
	}
	if timeout == 0 {
		timeout = DefaultHealthTimeout
	}
	if retries == 0 {
		retries = DefaultHealthRetries
	}
	select {
	case <-machine.Started():
	case <-done:
		return
	case <-s.ctx.Done():
		return
	}
	began := time.Now()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		m.mu.Lock()
		paused := m.rec.Status == state.StatusPaused
		m.mu.Unlock()
		if paused {
			continue // a frozen guest cannot answer: its checks wait, as docker's do
		}
		r := probe(machine, healthCommand(cfg.Test), timeout)
		status, changed := hs.record(r, retries, time.Since(began) < time.Duration(cfg.StartPeriod))
		if !changed {
			continue
		}
		select {
		case <-done:
			return // the run ended while probing: its verdict is moot
		default:
		}
		m.mu.Lock()
		rec := *m.rec
		m.mu.Unlock()
		s.event(&rec, EventHealthStatus+": "+status)
		if status == HealthUnhealthy {
			s.onUnhealthy(m, onFailure)
		}
	}
}

// onUnhealthy applies --health-on-failure.
func (s *Supervisor) onUnhealthy(m *managed, action string) {
	ctx := s.ctx
	var err error
	switch action {
	case options.OnFailureKill:
		// The program dies of SIGKILL (137): the restart policy decides.
		err = s.Kill(ctx, m.id, syscall.SIGKILL)
	case options.OnFailureRestart:
		s.spawn(func() {
			if err := s.Restart(ctx, m.id, -1); err != nil && ctx.Err() == nil {
				s.log.Warn("restarting an unhealthy VM", "vm", m.id, "err", err)
			}
		})
	case options.OnFailureStop:
		s.spawn(func() {
			if err := s.Stop(ctx, m.id, -1); err != nil && ctx.Err() == nil {
				s.log.Warn("stopping an unhealthy VM", "vm", m.id, "err", err)
			}
		})
	}
	if err != nil {
		s.log.Warn("acting on an unhealthy VM", "vm", m.id, "action", action, "err", err)
	}
}

// probe runs one check through the guest agent. timeout covers the whole
// probe, opening the exec included: a guest that is slow to answer the
// open fails the check in time as one slow to run the command does.
func probe(machine *vm.VM, args []string, timeout time.Duration) HealthResult {
	begin := time.Now()
	r := HealthResult{Start: begin.UTC()}
	type opened struct {
		sess *vm.Session
		err  error
	}
	ch := make(chan opened, 1)
	go func() {
		sess, err := machine.Exec(agent.ExecRequest{Args: args})
		ch <- opened{sess, err}
	}()
	openTimer := time.NewTimer(timeout)
	var o opened
	select {
	case o = <-ch:
		openTimer.Stop()
	case <-openTimer.C:
		go func() { // the open ends within the agent's reply deadline
			if o := <-ch; o.sess != nil {
				o.sess.Close()
			}
		}()
		r.ExitCode, r.Output = -1, fmt.Sprintf("health check timed out after %s (the guest agent did not open it)", timeout)
		r.End = time.Now().UTC()
		return r
	}
	sess, err := o.sess, o.err
	if err != nil {
		r.ExitCode, r.Output = -1, err.Error()
		if ee, ok := err.(*vm.ExecError); ok {
			r.ExitCode = ee.Code
		}
		r.End = time.Now().UTC()
		return r
	}
	timer := time.AfterFunc(max(timeout-time.Since(begin), 0), sess.Close)
	defer timer.Stop()
	var out []byte
	for {
		f, err := sess.Recv()
		if err != nil {
			r.ExitCode, r.Output = -1, err.Error()
			if !timer.Stop() {
				r.Output = fmt.Sprintf("health check timed out after %s", timeout)
			}
			break
		}
		switch f.Type {
		case agent.FrameStdout, agent.FrameStderr:
			if room := healthOutputMax - len(out); room > 0 {
				out = append(out, f.Payload[:min(room, len(f.Payload))]...)
			}
			continue
		case agent.FrameExit:
			e, _ := vm.ParseExit(f)
			r.ExitCode, r.Output = e.ExitCode, string(out)
			sess.Close()
		default:
			continue
		}
		break
	}
	r.End = time.Now().UTC()
	return r
}

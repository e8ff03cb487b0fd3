package supervisor

import (
	"context"
	"fmt"
	"time"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/vm"
)

// startWait bounds how long an exec or copy waits for a starting VM's
// program to start.
const startWait = time.Minute

// Running returns a VM whose program runs, for exec and copy. A VM whose
// program has not started yet is waited for (bounded by startWait and
// ctx), so that an exec right after a start works, as docker's does; a VM
// that is not running, or whose run ends first, is an ErrConflict.
func (s *Supervisor) Running(ctx context.Context, ref string) (*vm.VM, error) {
	m, err := s.get(ctx, ref)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	done, machine, name, paused := m.runDone, m.machine, m.rec.Name, m.rec.Status == state.StatusPaused
	m.mu.Unlock()
	if done == nil || machine == nil {
		return nil, fmt.Errorf("VM %s is not running: %w", name, errdefs.ErrConflict)
	}
	if paused {
		return nil, fmt.Errorf("VM %s is paused: unpause it first (kiln unpause %s): %w", name, name, errdefs.ErrConflict)
	}
	timer := time.NewTimer(startWait)
	defer timer.Stop()
	select {
	case <-machine.Started():
	case <-done:
		return nil, fmt.Errorf("VM %s is not running: its run ended before its program started: %w", name, errdefs.ErrConflict)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		return nil, fmt.Errorf("VM %s is starting: its program has not started in %s: %w", name, startWait, errdefs.ErrConflict)
	}
	return machine, nil
}

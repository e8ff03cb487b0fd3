package supervisor

import (
	"context"
	"fmt"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/vm"
)

// Running returns a VM whose program runs, for exec and copy. A VM that
// is not running, or whose program has not started yet, is an
// ErrConflict.
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
	select {
	case <-machine.Started():
	default:
		return nil, fmt.Errorf("VM %s is starting: its program has not started yet: %w", name, errdefs.ErrConflict)
	}
	return machine, nil
}

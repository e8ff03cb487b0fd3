package vm

import (
	"context"
	"fmt"

	"kiln.dev/kiln/internal/errdefs"
)

// Running returns a VM whose program runs, for exec and copy. A VM that
// is not running, or whose program has not started yet, is an
// ErrConflict.
func (s *Supervisor) Running(ctx context.Context, ref string) (*VM, error) {
	m, err := s.get(ctx, ref)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	done, vm, name := m.runDone, m.vm, m.rec.Name
	m.mu.Unlock()
	if done == nil || vm == nil {
		return nil, fmt.Errorf("VM %s is not running: %w", name, errdefs.ErrConflict)
	}
	select {
	case <-vm.Started():
	default:
		return nil, fmt.Errorf("VM %s is starting: its program has not started yet: %w", name, errdefs.ErrConflict)
	}
	return vm, nil
}

package vm

import (
	"context"
	"fmt"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/vmm"
)

// pauser is the running VM's monitor, as a Pauser.
func (vm *VM) pauser() (vmm.Pauser, error) {
	m := vm.current()
	if m == nil || !m.Info().Running {
		return nil, fmt.Errorf("VM %s is not running: %w", vm.Name, errdefs.ErrConflict)
	}
	p, ok := m.(vmm.Pauser)
	if !ok {
		return nil, fmt.Errorf("the %s backend cannot pause a VM: %w", m.Info().Backend, errdefs.ErrUnavailable)
	}
	return p, nil
}

// Pause freezes the running VM's guest: its vCPUs and clock stop, its
// memory and devices stay; the monitor runs on.
func (vm *VM) Pause(ctx context.Context) error {
	p, err := vm.pauser()
	if err != nil {
		return err
	}
	return p.Pause(ctx)
}

// Unpause lets a paused guest run again.
func (vm *VM) Unpause(ctx context.Context) error {
	p, err := vm.pauser()
	if err != nil {
		return err
	}
	return p.Resume(ctx)
}

// Paused reports whether the running VM's guest is paused.
func (vm *VM) Paused(ctx context.Context) (bool, error) {
	p, err := vm.pauser()
	if err != nil {
		return false, err
	}
	return p.Paused(ctx)
}

package supervisor

import (
	"context"
	"fmt"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/vm"
)

// EventCheckpointed is recorded when a VM was saved as a checkpoint.
const EventCheckpointed = "checkpoint"

// Checkpoint saves the running VM ref as checkpoint name (vm.Checkpoint).
// Without leaveRunning the VM then ends as an explicit stop does: it is
// recorded exited (code 0) and its restart policy leaves it stopped. Stop,
// rm, kill and start wait for the checkpoint to be made, as for a start.
func (s *Supervisor) Checkpoint(ctx context.Context, ref, name string, leaveRunning bool) error {
	if err := options.ValidateCheckpointName(name); err != nil {
		return err
	}
	m, err := s.settled(ctx, ref)
	if err != nil {
		return err
	}
	if m.removed {
		m.mu.Unlock()
		return fmt.Errorf("no such VM: %s: %w", ref, errdefs.ErrNotFound)
	}
	if m.runDone == nil || m.machine == nil {
		m.mu.Unlock()
		return fmt.Errorf("VM %s is not running: only a running VM can be checkpointed: %w", m.rec.Name, errdefs.ErrConflict)
	}
	if m.rec.Status == state.StatusPaused {
		m.mu.Unlock()
		return fmt.Errorf("VM %s is paused: unpause it to checkpoint it (a checkpoint resumes the guest it saved): %w", m.rec.Name, errdefs.ErrConflict)
	}
	if err := m.machine.Checkpointable(); err != nil {
		m.mu.Unlock()
		return err
	}
	if _, err := m.machine.CheckpointInfo(name); err == nil {
		m.mu.Unlock()
		return fmt.Errorf("VM %s already has a checkpoint %q: remove it first (kiln checkpoint rm %s %s): %w", m.rec.Name, name, m.rec.Name, name, errdefs.ErrConflict)
	}
	if !leaveRunning && m.opts.AutoRemove {
		m.mu.Unlock()
		return fmt.Errorf("VM %s is removed when it ends (--rm), and its checkpoints with it: checkpoint it with --leave-running: %w", m.rec.Name, errdefs.ErrConflict)
	}
	busy := make(chan struct{})
	m.starting = busy // a stop, rm, kill or start waits for the checkpoint
	done, machine, desired := m.runDone, m.machine, m.rec.Desired
	if !leaveRunning {
		m.rec.Desired, m.checkpointed = state.DesiredStopped, true
		if m.timer != nil {
			m.timer.Stop()
			m.timer = nil
		}
		s.save(m)
	}
	m.mu.Unlock()
	err = machine.Checkpoint(ctx, name, leaveRunning)
	if err == nil && !leaveRunning {
		select {
		case <-done: // the monitor has recorded the end of the run
		case <-s.ctx.Done(): // closing: the next daemon records it
		}
	}
	m.mu.Lock()
	m.starting = nil
	close(busy)
	if err != nil && !leaveRunning {
		m.rec.Desired, m.checkpointed = desired, false
		s.save(m)
	}
	rec := *m.rec
	m.mu.Unlock()
	if err != nil {
		return err
	}
	s.event(&rec, EventCheckpointed, "name="+name)
	return nil
}

// Checkpoints lists the checkpoints of VM ref, oldest first.
func (s *Supervisor) Checkpoints(ctx context.Context, ref string) ([]vm.Checkpoint, error) {
	m, err := s.get(ctx, ref)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	machine, name := m.machine, m.rec.Name
	m.mu.Unlock()
	if machine == nil {
		return nil, fmt.Errorf("VM %s has no directory: %w", name, errdefs.ErrConflict)
	}
	return machine.Checkpoints()
}

// RemoveCheckpoint deletes checkpoint name of VM ref; it waits for a
// start (perhaps from that checkpoint) or checkpoint under way.
func (s *Supervisor) RemoveCheckpoint(ctx context.Context, ref, name string) error {
	if err := options.ValidateCheckpointName(name); err != nil {
		return err
	}
	m, err := s.settled(ctx, ref)
	if err != nil {
		return err
	}
	defer m.mu.Unlock()
	if m.removed || m.machine == nil {
		return fmt.Errorf("no such VM: %s: %w", ref, errdefs.ErrNotFound)
	}
	return m.machine.RemoveCheckpoint(name)
}

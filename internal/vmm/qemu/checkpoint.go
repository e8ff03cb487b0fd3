package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"kiln.dev/kiln/internal/vmm"
)

var _ vmm.Saver = (*Machine)(nil)

// saveFD is the name the state file's descriptor gets in QEMU (getfd).
const saveFD = "kiln-save"

// saveBandwidth lifts QEMU's migration rate limit (128 MiB/s by default):
// the guest is paused and the target is a local file.
const saveBandwidth = 8 << 30

// Save pauses the guest and migrates its state into f. QEMU gets the
// write end of a pipe as a descriptor (QMP getfd, then migrate fd:): a
// jailed QEMU can open no file of its own, and its sandbox denies the
// process an exec: URI would spawn. The daemon copies the pipe into f, at
// most stateLimit bytes: a QEMU taken over by its guest cannot fill the
// host's disk through a checkpoint, nor write into it after the save.
// When the migration completes QEMU has flushed and let go of its disks
// and the guest stays paused (postmigrate).
func (m *Machine) Save(ctx context.Context, f *os.File) error {
	if !m.Info().Running {
		return vmm.ErrNotRunning
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("saving the guest's state: %w", err)
	}
	defer pr.Close()
	defer pw.Close()
	limit := stateLimit(m.cfg.MemoryMiB)
	copied := make(chan error, 1)
	go func() {
		n, err := io.Copy(f, io.LimitReader(pr, limit+1))
		if err == nil && n > limit {
			err = fmt.Errorf("QEMU's state of VM %s passed %d bytes, more than a guest of %d MiB can have: %w", m.cfg.ID, limit, m.cfg.MemoryMiB, ErrStateTooLarge)
		}
		pr.Close() // a QEMU writing on gets EPIPE
		copied <- err
	}()
	paused := false
	err = m.session(ctx, func(mon *qmp.SocketMonitor) error {
		if _, err := mon.Run([]byte(`{"execute":"stop"}`)); err != nil {
			pw.Close()
			return fmt.Errorf("pausing the guest: %w", err)
		}
		paused = true
		_, _ = mon.Run([]byte(fmt.Sprintf(`{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":%d}}`, saveBandwidth)))
		_, err := mon.RunWithFile([]byte(`{"execute":"getfd","arguments":{"fdname":"`+saveFD+`"}}`), pw)
		pw.Close() // QEMU has its own copy; the stream ends when QEMU closes it
		if err != nil {
			return fmt.Errorf("handing QEMU the state stream: %w", err)
		}
		if _, err := mon.Run([]byte(`{"execute":"migrate","arguments":{"uri":"fd:` + saveFD + `"}}`)); err != nil {
			return fmt.Errorf("saving the guest's state: %w", err)
		}
		streamDone := false
		for {
			raw, err := mon.Run([]byte(`{"execute":"query-migrate"}`))
			if err != nil {
				return fmt.Errorf("saving the guest's state: %w", err)
			}
			var r struct {
				Return struct {
					Status    string `json:"status"`
					ErrorDesc string `json:"error-desc"`
				} `json:"return"`
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("reading QEMU's migration status: %w", err)
			}
			switch r.Return.Status {
			case "completed":
				// QEMU closes the stream as it completes; one that holds
				// it open has not finished its save.
				if streamDone {
					return nil
				}
				select {
				case err := <-copied:
					if err != nil {
						return fmt.Errorf("saving the guest's state: %w", err)
					}
					return nil
				case <-time.After(streamCloseTimeout):
					return fmt.Errorf("saving the guest's state: QEMU reported the save complete but did not close the stream within %s", streamCloseTimeout)
				}
			case "failed", "cancelled":
				return fmt.Errorf("saving the guest's state: migration %s: %s", r.Return.Status, orNone(r.Return.ErrorDesc, "no reason given"))
			}
			select {
			case <-ctx.Done():
				_, _ = mon.Run([]byte(`{"execute":"migrate_cancel"}`))
				return ctx.Err()
			case err := <-copied:
				if err != nil { // past its limit, or unwritable
					_, _ = mon.Run([]byte(`{"execute":"migrate_cancel"}`))
					return fmt.Errorf("saving the guest's state: %w", err)
				}
				// Ended: QEMU is about to report the save complete (or
				// failed).
				streamDone, copied = true, nil
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	if err != nil && paused {
		if rerr := m.Resume(context.WithoutCancel(ctx)); rerr != nil {
			m.log.Warn("resuming a guest after a failed save", "vm", m.cfg.ID, "err", rerr)
		}
	}
	return err
}

// ErrStateTooLarge: a save's state stream passed its bound (stateLimit).
var ErrStateTooLarge = errors.New("saved state too large")

// stateLimit bounds a saved guest's state: its memory, with room for the
// stream's page headers (8 bytes a 4 KiB page) and the devices' state.
func stateLimit(memoryMiB int) int64 {
	return int64(memoryMiB)<<20 + 64<<20
}

// streamCloseTimeout bounds the wait for QEMU to close the state stream
// once it has reported the save complete.
const streamCloseTimeout = 10 * time.Second

// Resume lets the guest run again (QMP cont), after Save.
func (m *Machine) Resume(ctx context.Context) error {
	_, err := m.qmp(ctx, "cont")
	return err
}

// Pause freezes the guest (QMP stop): its vCPUs stop, and with them the
// guest's clock under TCG (QEMU's virtual clock); QEMU runs on.
func (m *Machine) Pause(ctx context.Context) error {
	_, err := m.qmp(ctx, "stop")
	return err
}

// Paused reports whether the guest is paused (QMP query-status).
func (m *Machine) Paused(ctx context.Context) (bool, error) {
	raw, err := m.qmp(ctx, "query-status")
	if err != nil {
		return false, err
	}
	var r struct {
		Return struct {
			Status string `json:"status"`
		} `json:"return"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return false, fmt.Errorf("QMP query-status: %w", err)
	}
	return r.Return.Status == "paused", nil
}

// incomingTimeout bounds loading a saved guest.
const incomingTimeout = 2 * time.Minute

// waitIncoming waits until QEMU has loaded the saved guest it was started
// with and runs it (QEMU runs it once loaded; a guest left paused is
// continued). A state QEMU cannot load ends QEMU; the error carries what
// it printed.
func (m *Machine) waitIncoming(ctx context.Context, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, incomingTimeout)
	defer cancel()
	for {
		raw, err := m.qmp(ctx, "query-status")
		var r struct {
			Return struct {
				Status string `json:"status"`
			} `json:"return"`
		}
		if err == nil {
			err = json.Unmarshal(raw, &r)
		}
		select {
		case <-done:
			return fmt.Errorf("QEMU could not resume the saved guest: %s", orNone(LastLines(m.cfg.Dir+"/"+StderrLog, 5), "(no output)"))
		default:
		}
		if err != nil {
			return fmt.Errorf("resuming the saved guest: %w", err)
		}
		switch r.Return.Status {
		case "running":
			return nil
		case "inmigrate":
		case "paused", "postmigrate", "prelaunch":
			if _, err := m.qmp(ctx, "cont"); err != nil {
				return fmt.Errorf("running the resumed guest: %w", err)
			}
		default:
			return fmt.Errorf("resuming the saved guest: QEMU is %s", r.Return.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("resuming the saved guest: %w", ctx.Err())
		case <-done:
		case <-time.After(10 * time.Millisecond): // a load takes 50-300 ms
		}
	}
}

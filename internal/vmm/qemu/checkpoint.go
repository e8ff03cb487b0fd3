package qemu

import (
	"context"
	"encoding/json"
	"fmt"
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

// Save pauses the guest and migrates its state into f, handed to QEMU as
// a descriptor (QMP getfd, then migrate fd:): a jailed QEMU can open no
// file of its own, and its sandbox denies the process an exec: URI
// would spawn. When the migration completes QEMU has flushed and let go
// of its disks and the guest stays paused (postmigrate).
func (m *Machine) Save(ctx context.Context, f *os.File) error {
	if !m.Info().Running {
		return vmm.ErrNotRunning
	}
	paused := false
	err := m.session(ctx, func(mon *qmp.SocketMonitor) error {
		if _, err := mon.Run([]byte(`{"execute":"stop"}`)); err != nil {
			return fmt.Errorf("pausing the guest: %w", err)
		}
		paused = true
		_, _ = mon.Run([]byte(fmt.Sprintf(`{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":%d}}`, saveBandwidth)))
		if _, err := mon.RunWithFile([]byte(`{"execute":"getfd","arguments":{"fdname":"`+saveFD+`"}}`), f); err != nil {
			return fmt.Errorf("handing QEMU the state file: %w", err)
		}
		if _, err := mon.Run([]byte(`{"execute":"migrate","arguments":{"uri":"fd:` + saveFD + `"}}`)); err != nil {
			return fmt.Errorf("saving the guest's state: %w", err)
		}
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
				return nil
			case "failed", "cancelled":
				return fmt.Errorf("saving the guest's state: migration %s: %s", r.Return.Status, orNone(r.Return.ErrorDesc, "no reason given"))
			}
			select {
			case <-ctx.Done():
				_, _ = mon.Run([]byte(`{"execute":"migrate_cancel"}`))
				return ctx.Err()
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

// Resume lets the guest run again (QMP cont), after Save.
func (m *Machine) Resume(ctx context.Context) error {
	_, err := m.qmp(ctx, "cont")
	return err
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

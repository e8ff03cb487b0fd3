// Package state is kiln's persistent state: VMs (their spec, desired and
// observed state, exit code, restart count) and events, in one SQLite
// database under the kiln root. Every write is one transaction; the daemon
// is the only writer, and it reconciles this record with the processes it
// finds at start-up instead of trusting it.
package state

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite", pure Go

	"kiln.dev/kiln/internal/errdefs"
)

// Store is the state database.
type Store struct {
	db *sql.DB
}

const schema = `
CREATE TABLE IF NOT EXISTS vms (
	id            TEXT PRIMARY KEY,
	name          TEXT NOT NULL UNIQUE,
	spec          BLOB NOT NULL,
	created       INTEGER NOT NULL,
	desired       TEXT NOT NULL,
	status        TEXT NOT NULL,
	pid           INTEGER NOT NULL DEFAULT 0,
	exit_code     INTEGER NOT NULL DEFAULT 0,
	error         TEXT NOT NULL DEFAULT '',
	started_at    INTEGER NOT NULL DEFAULT 0,
	finished_at   INTEGER NOT NULL DEFAULT 0,
	restart_count INTEGER NOT NULL DEFAULT 0,
	boot_uptime   REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
	seq    INTEGER PRIMARY KEY AUTOINCREMENT,
	time   INTEGER NOT NULL,
	vm_id  TEXT NOT NULL,
	name   TEXT NOT NULL,
	action TEXT NOT NULL,
	attrs  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
`

// Open opens (creating if needed) the database at path. A file that is not
// a SQLite database is reported as such and left untouched.
func Open(path string) (*Store, error) {
	if st, err := os.Stat(path); err == nil && st.Size() > 0 {
		if err := checkHeader(path); err != nil {
			return nil, err
		}
	}
	// SQLite gives its -wal and -shm files the database file's mode, and
	// the WAL holds VM records: make the file 0600 before SQLite does.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening state database %s: %w", path, err)
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("restricting %s: %w", p, err)
		}
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("opening state database %s: %w", path, err)
	}
	// One connection: SQLite serialises writers anyway, and one connection
	// makes every transaction see the previous one without surprises.
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(schema + networkSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("preparing state database %s: %w", path, err)
	}
	if err := addNetworkLabels(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("preparing state database %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// checkHeader refuses a file that does not start with SQLite's magic.
func checkHeader(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening state database: %w", err)
	}
	defer f.Close()
	magic := make([]byte, 16)
	if _, err := f.Read(magic); err != nil || string(magic) != "SQLite format 3\x00" {
		return fmt.Errorf("state database %s is not a SQLite database: move it away to start with empty state: %w", path, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// VM statuses.
const (
	StatusCreated  = "created"
	StatusStarting = "starting"
	StatusRunning  = "running"
	// StatusPaused: running, its guest frozen (kiln pause).
	StatusPaused     = "paused"
	StatusStopping   = "stopping"
	StatusRestarting = "restarting"
	StatusExited     = "exited"
	// StatusDead: the VM's state is broken (its directory vanished) and it
	// can only be removed.
	StatusDead = "dead"
)

// Desired states.
const (
	DesiredRunning = "running"
	DesiredStopped = "stopped"
)

// VM is one VM's record.
type VM struct {
	ID           string
	Name         string
	Spec         []byte // the supervisor's record of the VM (its options), JSON
	Created      time.Time
	Desired      string
	Status       string
	PID          int
	ExitCode     int
	Error        string
	StartedAt    time.Time
	FinishedAt   time.Time
	RestartCount int
	BootUptime   float64
}

const vmColumns = `id, name, spec, created, desired, status, pid, exit_code, error, started_at, finished_at, restart_count, boot_uptime`

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

type scanner interface{ Scan(...any) error }

func scanVM(r scanner) (*VM, error) {
	var v VM
	var created, started, finished int64
	if err := r.Scan(&v.ID, &v.Name, &v.Spec, &created, &v.Desired, &v.Status, &v.PID, &v.ExitCode, &v.Error, &started, &finished, &v.RestartCount, &v.BootUptime); err != nil {
		return nil, err
	}
	v.Created, v.StartedAt, v.FinishedAt = fromNano(created), fromNano(started), fromNano(finished)
	return &v, nil
}

// InsertVM adds a VM. A name or ID already in use is errdefs.ErrConflict.
func (s *Store) InsertVM(ctx context.Context, v *VM) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO vms (`+vmColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		v.ID, v.Name, v.Spec, unixNano(v.Created), v.Desired, v.Status, v.PID, v.ExitCode, v.Error,
		unixNano(v.StartedAt), unixNano(v.FinishedAt), v.RestartCount, v.BootUptime)
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE constraint failed: vms.name") {
			return fmt.Errorf("the name %q is already in use: %w", v.Name, errdefs.ErrConflict)
		}
		if strings.Contains(err.Error(), "UNIQUE constraint failed") {
			return fmt.Errorf("VM ID %s is already in use: %w", v.ID, errdefs.ErrConflict)
		}
		return fmt.Errorf("recording VM %s: %w", v.Name, err)
	}
	return nil
}

// UpdateVM writes v's observed and desired state (not its spec or name).
func (s *Store) UpdateVM(ctx context.Context, v *VM) error {
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET desired=?, status=?, pid=?, exit_code=?, error=?, started_at=?, finished_at=?, restart_count=?, boot_uptime=? WHERE id=?`,
		v.Desired, v.Status, v.PID, v.ExitCode, v.Error, unixNano(v.StartedAt), unixNano(v.FinishedAt), v.RestartCount, v.BootUptime, v.ID)
	if err != nil {
		return fmt.Errorf("updating VM %s: %w", v.Name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("VM %s: %w", v.ID, errdefs.ErrNotFound)
	}
	return nil
}

// GetVM finds a VM by full ID, name, or a unique ID prefix, as docker does.
func (s *Store) GetVM(ctx context.Context, ref string) (*VM, error) {
	if ref == "" {
		return nil, fmt.Errorf("no VM named: %w", errdefs.ErrInvalidArgument)
	}
	row := s.db.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE id=? OR name=? ORDER BY id=? DESC LIMIT 1`, ref, ref, ref)
	v, err := scanVM(row)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("looking up VM %q: %w", ref, err)
	}
	if !isHex(ref) {
		return nil, fmt.Errorf("no such VM: %s: %w", ref, errdefs.ErrNotFound)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE substr(id, 1, ?) = ? LIMIT 2`, len(ref), ref)
	if err != nil {
		return nil, fmt.Errorf("looking up VM %q: %w", ref, err)
	}
	defer rows.Close()
	var found []*VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, fmt.Errorf("reading VM: %w", err)
		}
		found = append(found, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("looking up VM %q: %w", ref, err)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no such VM: %s: %w", ref, errdefs.ErrNotFound)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("ID prefix %q matches more than one VM: give more of the ID: %w", ref, errdefs.ErrConflict)
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// RenameVM gives VM id the name name. A name in use is
// errdefs.ErrConflict; an unknown id errdefs.ErrNotFound.
func (s *Store) RenameVM(ctx context.Context, id, name string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET name=? WHERE id=?`, name, id)
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE constraint failed: vms.name") {
			return fmt.Errorf("the name %q is already in use: %w", name, errdefs.ErrConflict)
		}
		return fmt.Errorf("renaming VM %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("VM %s: %w", id, errdefs.ErrNotFound)
	}
	return nil
}

// NameInUse reports whether a VM has exactly this name (a name that is
// also a prefix of some VM's ID is not in use for that).
func (s *Store) NameInUse(ctx context.Context, name string) (bool, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM vms WHERE name=?`, name).Scan(&n); err != nil {
		return false, fmt.Errorf("looking up VM name %q: %w", name, err)
	}
	return n > 0, nil
}

// ListVMs returns every VM, oldest first.
func (s *Store) ListVMs(ctx context.Context) ([]*VM, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY created`)
	if err != nil {
		return nil, fmt.Errorf("listing VMs: %w", err)
	}
	defer rows.Close()
	var out []*VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, fmt.Errorf("reading VM: %w", err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing VMs: %w", err)
	}
	return out, nil
}

// DeleteVM removes a VM's record.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM vms WHERE id=?`, id); err != nil {
		return fmt.Errorf("deleting VM %s: %w", id, err)
	}
	return nil
}

// Event is something that happened to a VM.
type Event struct {
	Seq    int64
	Time   time.Time
	VMID   string
	Name   string
	Action string
	// Attrs are extra facts, "key=value" joined by commas (exitCode=3).
	Attrs string
}

// AddEvent records e and returns it with its sequence number.
func (s *Store) AddEvent(ctx context.Context, e Event) (Event, error) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO events (time, vm_id, name, action, attrs) VALUES (?,?,?,?,?)`,
		e.Time.UnixNano(), e.VMID, e.Name, e.Action, e.Attrs)
	if err != nil {
		return e, fmt.Errorf("recording event %s of %s: %w", e.Action, e.Name, err)
	}
	e.Seq, _ = res.LastInsertId()
	return e, nil
}

// Events returns the events at or after since (and before until when it is
// not zero), oldest first.
func (s *Store) Events(ctx context.Context, since, until time.Time) ([]Event, error) {
	q := `SELECT seq, time, vm_id, name, action, attrs FROM events WHERE time >= ?`
	args := []any{unixNano(since)}
	if !until.IsZero() {
		q += ` AND time < ?`
		args = append(args, until.UnixNano())
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY seq`, args...)
	if err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var t int64
		if err := rows.Scan(&e.Seq, &t, &e.VMID, &e.Name, &e.Action, &e.Attrs); err != nil {
			return nil, fmt.Errorf("reading event: %w", err)
		}
		e.Time = fromNano(t)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	return out, nil
}

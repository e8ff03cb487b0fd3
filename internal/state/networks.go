package state

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"kiln.dev/kiln/internal/errdefs"
)

// networkSchema holds bridge networks and the addresses leased on them. A
// lease's primary key is (network, ip): SQLite itself refuses to lease an
// address twice, whatever the callers do; a VM holds at most one lease.
const networkSchema = `
CREATE TABLE IF NOT EXISTS networks (
	name     TEXT PRIMARY KEY,
	subnet   TEXT NOT NULL UNIQUE,
	gateway  TEXT NOT NULL,
	bridge   TEXT NOT NULL UNIQUE,
	egress   INTEGER NOT NULL DEFAULT 0,
	isolate  INTEGER NOT NULL DEFAULT 0,
	created  INTEGER NOT NULL,
	labels   TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS leases (
	network  TEXT NOT NULL REFERENCES networks(name),
	ip       TEXT NOT NULL,
	vm_id    TEXT NOT NULL UNIQUE,
	PRIMARY KEY (network, ip)
);
`

// Network is a bridge network's record.
type Network struct {
	Name string
	// Subnet is the network's IPv4 prefix ("10.99.0.0/24").
	Subnet netip.Prefix
	// Gateway is the bridge's address in Subnet: the VMs' default route
	// and name server.
	Gateway netip.Addr
	// Bridge is the host's bridge interface.
	Bridge string
	// Egress lets VMs reach beyond the network (masqueraded).
	Egress bool
	// IsolateVMs stops VMs of the network reaching each other.
	IsolateVMs bool
	Created    time.Time
	// Labels are the user's metadata (docker's network create --label).
	Labels map[string]string
}

// addNetworkLabels gives a database made before networks had labels
// their column.
func addNetworkLabels(db *sql.DB) error {
	rows, err := db.Query(`PRAGMA table_info(networks)`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var cid, notnull, pk int
		var name, typ string
		var dflt sql.NullString
		if err := rows.Scan(&cid, &name, &typ, &notnull, &dflt, &pk); err != nil {
			return err
		}
		if name == "labels" {
			return nil
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	rows.Close()
	_, err = db.Exec(`ALTER TABLE networks ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'`)
	return err
}

// Lease is an address of a network held by a VM.
type Lease struct {
	Network string
	IP      netip.Addr
	VMID    string
}

const networkColumns = `name, subnet, gateway, bridge, egress, isolate, created, labels`

func scanNetwork(r scanner) (*Network, error) {
	var n Network
	var subnet, gw string
	var created int64
	var labels string
	if err := r.Scan(&n.Name, &subnet, &gw, &n.Bridge, &n.Egress, &n.IsolateVMs, &created, &labels); err != nil {
		return nil, err
	}
	var err error
	if labels != "" && labels != "{}" {
		if err := json.Unmarshal([]byte(labels), &n.Labels); err != nil {
			return nil, fmt.Errorf("network %s: stored labels: %w", n.Name, err)
		}
	}
	if n.Subnet, err = netip.ParsePrefix(subnet); err != nil {
		return nil, fmt.Errorf("network %s: stored subnet %q: %w", n.Name, subnet, err)
	}
	if n.Gateway, err = netip.ParseAddr(gw); err != nil {
		return nil, fmt.Errorf("network %s: stored gateway %q: %w", n.Name, gw, err)
	}
	n.Created = fromNano(created)
	return &n, nil
}

// InsertNetwork records a network. A name in use is errdefs.ErrConflict, and
// so is a subnet that overlaps another network's: the check and the insert
// are one transaction.
func (s *Store) InsertNetwork(ctx context.Context, n *Network) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("recording network %s: %w", n.Name, err)
	}
	defer tx.Rollback()
	others, err := listNetworks(ctx, tx)
	if err != nil {
		return err
	}
	for _, o := range others {
		if o.Name == n.Name {
			return fmt.Errorf("a network named %q already exists: %w", n.Name, errdefs.ErrConflict)
		}
		if o.Subnet.Overlaps(n.Subnet) {
			return errdefs.Mark(fmt.Errorf("subnet %s overlaps network %s (%s): %w", n.Subnet, o.Name, o.Subnet, errdefs.ErrConflict), ErrSubnetOverlap)
		}
	}
	labels := []byte("{}")
	if len(n.Labels) > 0 {
		if labels, err = json.Marshal(n.Labels); err != nil {
			return fmt.Errorf("network %s: encoding labels: %w", n.Name, err)
		}
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO networks (`+networkColumns+`) VALUES (?,?,?,?,?,?,?,?)`,
		n.Name, n.Subnet.String(), n.Gateway.String(), n.Bridge, n.Egress, n.IsolateVMs, unixNano(n.Created), string(labels))
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE constraint failed") {
			return fmt.Errorf("network %s: name or bridge %s already in use: %w", n.Name, n.Bridge, errdefs.ErrConflict)
		}
		return fmt.Errorf("recording network %s: %w", n.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("recording network %s: %w", n.Name, err)
	}
	return nil
}

type querier interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

func listNetworks(ctx context.Context, q querier) ([]*Network, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+networkColumns+` FROM networks ORDER BY created, name`)
	if err != nil {
		return nil, fmt.Errorf("listing networks: %w", err)
	}
	defer rows.Close()
	var out []*Network
	for rows.Next() {
		n, err := scanNetwork(rows)
		if err != nil {
			return nil, fmt.Errorf("reading network: %w", err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing networks: %w", err)
	}
	return out, nil
}

// ListNetworks returns every network, oldest first.
func (s *Store) ListNetworks(ctx context.Context) ([]*Network, error) {
	return listNetworks(ctx, s.db)
}

// GetNetwork returns the network of that name.
func (s *Store) GetNetwork(ctx context.Context, name string) (*Network, error) {
	n, err := scanNetwork(s.db.QueryRowContext(ctx, `SELECT `+networkColumns+` FROM networks WHERE name=?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("no such network: %s: %w", name, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up network %q: %w", name, err)
	}
	return n, nil
}

// DeleteNetwork removes a network; one with leases (VMs on it) is
// errdefs.ErrConflict, checked in the same transaction.
func (s *Store) DeleteNetwork(ctx context.Context, name string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("removing network %s: %w", name, err)
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM leases WHERE network=?`, name).Scan(&n); err != nil {
		return fmt.Errorf("removing network %s: %w", name, err)
	}
	if n > 0 {
		return fmt.Errorf("network %s is in use by %d VM(s): remove them first: %w", name, n, errdefs.ErrConflict)
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM networks WHERE name=?`, name)
	if err != nil {
		return fmt.Errorf("removing network %s: %w", name, err)
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return fmt.Errorf("no such network: %s: %w", name, errdefs.ErrNotFound)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("removing network %s: %w", name, err)
	}
	return nil
}

// Lease gives vmID an address on the network, in one transaction: want if
// it is valid (inside the subnet, not its network, broadcast or gateway
// address) and free, else (want invalid) the lowest free address. An address
// already leased is errdefs.ErrConflict, and so is a full network.
func (s *Store) Lease(ctx context.Context, network, vmID string, want netip.Addr) (Lease, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Lease{}, fmt.Errorf("leasing an address on %s: %w", network, err)
	}
	defer tx.Rollback()
	n, err := scanNetwork(tx.QueryRowContext(ctx, `SELECT `+networkColumns+` FROM networks WHERE name=?`, network))
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, fmt.Errorf("no such network: %s: %w", network, errdefs.ErrNotFound)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("leasing an address on %s: %w", network, err)
	}
	used := map[netip.Addr]bool{n.Gateway: true}
	rows, err := tx.QueryContext(ctx, `SELECT ip FROM leases WHERE network=?`, network)
	if err != nil {
		return Lease{}, fmt.Errorf("leasing an address on %s: %w", network, err)
	}
	for rows.Next() {
		var ip string
		if err := rows.Scan(&ip); err != nil {
			rows.Close()
			return Lease{}, fmt.Errorf("reading leases of %s: %w", network, err)
		}
		if a, err := netip.ParseAddr(ip); err == nil {
			used[a] = true
		}
	}
	rows.Close()
	first, last := HostRange(n.Subnet)
	ip := want
	if ip.IsValid() {
		switch {
		case !n.Subnet.Contains(ip):
			return Lease{}, errdefs.Invalid(fmt.Sprintf("invalid IP %s: not in network %s's subnet %s", ip, network, n.Subnet))
		case ip.Less(first) || last.Less(ip):
			return Lease{}, errdefs.Invalid(fmt.Sprintf("invalid IP %s: the network or broadcast address of %s", ip, n.Subnet))
		case ip == n.Gateway:
			return Lease{}, errdefs.Invalid(fmt.Sprintf("invalid IP %s: the gateway of network %s", ip, network))
		case used[ip]:
			return Lease{}, fmt.Errorf("IP %s is already leased on network %s: %w", ip, network, errdefs.ErrConflict)
		}
	} else {
		ip = netip.Addr{}
		for a := first; a.IsValid() && !last.Less(a); a = a.Next() {
			if !used[a] {
				ip = a
				break
			}
		}
		if !ip.IsValid() {
			return Lease{}, fmt.Errorf("network %s has no free address: every address of %s is leased: %w", network, n.Subnet, errdefs.ErrConflict)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO leases (network, ip, vm_id) VALUES (?,?,?)`, network, ip.String(), vmID); err != nil {
		if strings.Contains(err.Error(), "UNIQUE constraint failed") {
			return Lease{}, fmt.Errorf("IP %s on network %s or VM %s is already leased: %w", ip, network, vmID, errdefs.ErrConflict)
		}
		return Lease{}, fmt.Errorf("leasing %s on %s: %w", ip, network, err)
	}
	if err := tx.Commit(); err != nil {
		return Lease{}, fmt.Errorf("leasing %s on %s: %w", ip, network, err)
	}
	return Lease{Network: network, IP: ip, VMID: vmID}, nil
}

// HostRange returns the first and last host addresses of an IPv4 prefix
// (without its network and broadcast addresses).
func HostRange(p netip.Prefix) (first, last netip.Addr) {
	p = p.Masked()
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	size := uint32(1) << (32 - p.Bits())
	lo, hi := v+1, v+size-2
	return u32Addr(lo), u32Addr(hi)
}

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ReleaseLease drops the VM's lease, if it has one.
func (s *Store) ReleaseLease(ctx context.Context, vmID string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM leases WHERE vm_id=?`, vmID); err != nil {
		return fmt.Errorf("releasing the address of VM %s: %w", vmID, err)
	}
	return nil
}

// Leases returns every lease, ordered by network and address.
func (s *Store) Leases(ctx context.Context) ([]Lease, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT network, ip, vm_id FROM leases ORDER BY network`)
	if err != nil {
		return nil, fmt.Errorf("listing leases: %w", err)
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		var l Lease
		var ip string
		if err := rows.Scan(&l.Network, &ip, &l.VMID); err != nil {
			return nil, fmt.Errorf("reading lease: %w", err)
		}
		if l.IP, err = netip.ParseAddr(ip); err != nil {
			return nil, fmt.Errorf("stored lease %q: %w", ip, err)
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// ReleaseOrphanLeases drops leases held by VMs that have no record (a run
// that failed, or a daemon that died between leasing and recording), and
// returns how many it dropped.
func (s *Store) ReleaseOrphanLeases(ctx context.Context) (int, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM leases WHERE vm_id NOT IN (SELECT id FROM vms)`)
	if err != nil {
		return 0, fmt.Errorf("releasing orphan leases: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// ErrSubnetOverlap marks a refusal of a network whose subnet overlaps
// another's (or a route of the host): one picking a subnet tries the next.
var ErrSubnetOverlap = errors.New("subnet overlaps")

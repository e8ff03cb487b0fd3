package state

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/internal/errdefs"
)

func testNetwork(name, subnet string) *Network {
	p := netip.MustParsePrefix(subnet)
	gw, _ := HostRange(p)
	return &Network{Name: name, Subnet: p, Gateway: gw, Bridge: "kb-" + name, Created: time.Now()}
}

func TestNetworkOverlapAndDuplicate(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	if err := s.InsertNetwork(ctx, testNetwork("a", "10.99.0.0/24")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Network{testNetwork("a", "10.98.0.0/24"), testNetwork("b", "10.99.0.128/25"), testNetwork("c", "10.0.0.0/8")} {
		if err := s.InsertNetwork(ctx, n); !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("InsertNetwork(%s %s) = %v, want a conflict", n.Name, n.Subnet, err)
		}
	}
	ns, err := s.ListNetworks(ctx)
	if err != nil || len(ns) != 1 || ns[0].Subnet.String() != "10.99.0.0/24" || ns[0].Gateway.String() != "10.99.0.1" {
		t.Fatalf("ListNetworks = %v, %v", ns, err)
	}
}

func TestLeaseStaticNextFreeExhaustionAndRelease(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	if err := s.InsertNetwork(ctx, testNetwork("small", "10.77.0.0/29")); err != nil {
		t.Fatal(err)
	}
	// /29: .1 is the gateway, .2-.6 for VMs.
	if l, err := s.Lease(ctx, "small", "vm-static", netip.MustParseAddr("10.77.0.5")); err != nil || l.IP.String() != "10.77.0.5" {
		t.Fatalf("static lease = %v, %v", l, err)
	}
	for _, tt := range []struct {
		ip   string
		want error
	}{
		{"10.77.0.5", errdefs.ErrConflict},
		{"10.77.0.9", errdefs.ErrInvalidArgument},
		{"10.77.0.1", errdefs.ErrInvalidArgument},
		{"10.77.0.7", errdefs.ErrInvalidArgument},
	} {
		if _, err := s.Lease(ctx, "small", "other-"+tt.ip, netip.MustParseAddr(tt.ip)); !errors.Is(err, tt.want) {
			t.Errorf("Lease(%s) = %v, want %v", tt.ip, err, tt.want)
		}
	}
	var got []string
	for i := range 4 {
		l, err := s.Lease(ctx, "small", fmt.Sprint("vm", i), netip.Addr{})
		if err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
		got = append(got, l.IP.String())
	}
	if fmt.Sprint(got) != "[10.77.0.2 10.77.0.3 10.77.0.4 10.77.0.6]" {
		t.Errorf("next-free leases = %v", got)
	}
	if _, err := s.Lease(ctx, "small", "vm-full", netip.Addr{}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("lease on a full network = %v, want a conflict", err)
	}
	if err := s.DeleteNetwork(ctx, "small"); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("DeleteNetwork in use = %v, want a conflict", err)
	}
	if err := s.ReleaseLease(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if l, err := s.Lease(ctx, "small", "vm-again", netip.Addr{}); err != nil || l.IP.String() != "10.77.0.3" {
		t.Errorf("lease after a release = %v, %v; want 10.77.0.3", l, err)
	}
	// No VM record holds any of these: all are orphans.
	if n, err := s.ReleaseOrphanLeases(ctx); err != nil || n != 5 {
		t.Errorf("ReleaseOrphanLeases = %d, %v; want 5", n, err)
	}
	if err := s.DeleteNetwork(ctx, "small"); err != nil {
		t.Errorf("DeleteNetwork after its leases went: %v", err)
	}
}

func TestLeaseParallelNeverShares(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	if err := s.InsertNetwork(ctx, testNetwork("p", "10.66.0.0/24")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]string{}
	for i := range 40 {
		wg.Go(func() {
			id := fmt.Sprint("vm", i)
			l, err := s.Lease(ctx, "p", id, netip.Addr{})
			if err != nil {
				t.Errorf("lease %s: %v", id, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := seen[l.IP.String()]; dup {
				t.Errorf("%s leased to %s and %s", l.IP, other, id)
			}
			seen[l.IP.String()] = id
		})
	}
	wg.Wait()
	if len(seen) != 40 {
		t.Errorf("%d distinct addresses for 40 leases", len(seen))
	}
}

func TestNetworkLabels(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	n := testNetwork("lab", "10.97.0.0/24")
	n.Labels = map[string]string{"com.docker.compose.project": "p", "tier": "front"}
	if err := s.InsertNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertNetwork(ctx, testNetwork("plain", "10.96.0.0/24")); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetNetwork(ctx, "lab")
	if err != nil || got.Labels["tier"] != "front" || got.Labels["com.docker.compose.project"] != "p" {
		t.Errorf("GetNetwork(lab) = %+v, %v", got, err)
	}
	if got, err := s.GetNetwork(ctx, "plain"); err != nil || len(got.Labels) != 0 {
		t.Errorf("GetNetwork(plain) = %+v, %v", got, err)
	}
}

// TestNetworkLabelsMigration: a database made before networks had labels
// gets the column, and its networks stay readable, with none.
func TestNetworkLabelsMigration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	old, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Exec(`CREATE TABLE networks (name TEXT PRIMARY KEY, subnet TEXT NOT NULL UNIQUE, gateway TEXT NOT NULL,
		bridge TEXT NOT NULL UNIQUE, egress INTEGER NOT NULL DEFAULT 0, isolate INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);
		INSERT INTO networks VALUES ('before', '10.95.0.0/24', '10.95.0.1', 'kb-before', 1, 0, 1700000000000000000);`); err != nil {
		t.Fatal(err)
	}
	old.Close()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	n, err := s.GetNetwork(ctx, "before")
	if err != nil || n.Subnet.String() != "10.95.0.0/24" || !n.Egress || len(n.Labels) != 0 {
		t.Errorf("a network from before labels: %+v, %v", n, err)
	}
	l := testNetwork("after", "10.94.0.0/24")
	l.Labels = map[string]string{"k": "v"}
	if err := s.InsertNetwork(ctx, l); err != nil {
		t.Fatal(err)
	}
	if n, err := s.GetNetwork(ctx, "after"); err != nil || n.Labels["k"] != "v" {
		t.Errorf("a network made after the migration: %+v, %v", n, err)
	}
}

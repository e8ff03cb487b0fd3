package network

import (
	"errors"
	"net"
	"strconv"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

func TestHoldKeepsPortsUntilClosed(t *testing.T) {
	ms := []PortMapping{{HostIP: "127.0.0.1", GuestPort: 80, Protocol: TCP}, {HostIP: "127.0.0.1", GuestPort: 53, Protocol: UDP}}
	got, held, err := Hold(ms)
	if err != nil || len(held) != 2 || got[0].HostPort == 0 || got[1].HostPort == 0 {
		t.Fatalf("Hold = %+v, %d held, %v", got, len(held), err)
	}
	// Held: a second publication of the same ports is refused, and holds
	// nothing.
	again, held2, err := Hold(got)
	if !errors.Is(err, errdefs.ErrConflict) || again != nil || held2 != nil {
		t.Errorf("Hold of held ports = %+v, %v, %v; want a conflict and nothing held", again, held2, err)
	}
	if _, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(got[0].HostPort)); err == nil {
		t.Error("a held TCP port could be bound")
	}
	for _, c := range held {
		c.Close()
	}
	_, held3, err := Hold(got)
	if err != nil {
		t.Errorf("Hold after the release: %v", err)
	}
	for _, c := range held3 {
		c.Close()
	}
	// A failure part way releases what was held before it.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	first := got[1] // udp, free again
	if _, held4, err := Hold([]PortMapping{first, {HostIP: "127.0.0.1", HostPort: taken, GuestPort: 1, Protocol: TCP}}); err == nil || held4 != nil {
		t.Fatalf("Hold with a taken port = %v, %d held", err, len(held4))
	}
	c, err := net.ListenPacket("udp4", "127.0.0.1:"+strconv.Itoa(first.HostPort))
	if err != nil {
		t.Errorf("UDP port %d still held after a failed Hold: %v", first.HostPort, err)
	} else {
		c.Close()
	}
}

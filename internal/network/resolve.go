package network

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"

	"kiln.dev/kiln/internal/errdefs"
)

// Resolve readies mappings for one start of a VM: it binds every fixed host
// port to prove it is free (so that a port in use is reported as such, not
// as the death of QEMU after it failed to bind it) and picks a free port for
// every ephemeral one by binding port 0. It then releases them all and
// returns the mappings with every HostIP and HostPort filled in.
//
// Between the release and QEMU's own bind another process may take a port:
// a small race, which then surfaces as QEMU failing to start. Ephemeral
// ports are all held until the last is picked, so no two mappings get the
// same one.
func Resolve(ms []PortMapping) (out []PortMapping, err error) {
	out, held, err := Hold(ms)
	for _, c := range held {
		c.Close()
	}
	return out, err
}

// Hold is Resolve without the release: it returns the bound sockets, for
// the caller to keep while the ports are published by other means (a bridge
// VM's ports are DNATed by the firewall, and a socket held on each keeps
// anyone else, another VM included, from taking them meanwhile; the DNAT
// happens before local delivery, so the socket sees no traffic). On error
// nothing is held.
func Hold(ms []PortMapping) (out []PortMapping, held []io.Closer, err error) {
	defer func() {
		if err != nil {
			for _, c := range held {
				c.Close()
			}
			held = nil
		}
	}()
	for _, m := range ms {
		m.HostIP = HostIP(m)
		c, port, err := bind(m.Protocol, m.HostIP, m.HostPort)
		if err != nil {
			switch {
			case errors.Is(err, syscall.EADDRNOTAVAIL):
				return nil, held, errdefs.Invalid(fmt.Sprintf("cannot publish %s on %s: no such address on this host", PortKey(m), m.HostIP))
			case m.HostPort == 0:
				return nil, held, fmt.Errorf("picking a free %s port on %s: %w", m.Protocol, m.HostIP, err)
			case errors.Is(err, syscall.EADDRINUSE):
				return nil, held, errdefs.Mark(fmt.Errorf("port %d is already in use on %s", m.HostPort, m.HostIP), errdefs.ErrConflict)
			}
			return nil, held, fmt.Errorf("checking %s port %d on %s: %w", m.Protocol, m.HostPort, m.HostIP, err)
		}
		held = append(held, c)
		m.HostPort = port
		out = append(out, m)
	}
	return out, held, nil
}

// bind binds proto ip:port and returns the socket and its port.
func bind(proto, ip string, port int) (io.Closer, int, error) {
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	if proto == UDP {
		c, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return nil, 0, err
		}
		return c, c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, 0, err
	}
	return l, l.Addr().(*net.TCPAddr).Port, nil
}

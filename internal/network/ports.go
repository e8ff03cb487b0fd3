package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

// Protocols a port can be published for.
const (
	TCP = "tcp"
	UDP = "udp"
)

// DefaultHostIP is the host address a port is published on when the spec
// names none: all IPv4 addresses, as docker does. In user mode QEMU's
// hostfwd listens on exactly this address.
const DefaultHostIP = "0.0.0.0"

// PortMapping is one published port: connections to HostIP:HostPort on the
// host reach GuestPort in the VM. It is the API's type itself: a request's
// ports are used as they come. HostIP is an IPv4 address, "" meaning
// DefaultHostIP; HostPort 0 asks for an ephemeral port, picked at each
// start; Protocol is TCP or UDP.
type PortMapping = api.PortMapping

// HostIP returns p's host address, with the default filled in.
func HostIP(p PortMapping) string {
	if p.HostIP == "" {
		return DefaultHostIP
	}
	return p.HostIP
}

// PortKey names p's guest side as docker does: "80/tcp".
func PortKey(p PortMapping) string { return strconv.Itoa(p.GuestPort) + "/" + p.Protocol }

// FormatPort is p as docker port prints it: "80/tcp -> 0.0.0.0:8080" (host
// port 0 while it is not resolved).
func FormatPort(p PortMapping) string {
	return PortKey(p) + " -> " + net.JoinHostPort(HostIP(p), strconv.Itoa(p.HostPort))
}

func invalid(msg string) error { return errdefs.Invalid(msg) }

// ParsePort parses one -p value, as docker takes it:
//
//	[ip:][hostPort|hostRange|""]:guestPort|guestRange[/tcp|/udp]
//	guestPort|guestRange[/tcp|/udp]
//
// A range ("8000-8009") maps port by port and must be as long as the range
// on the other side; an empty host port (or none) asks for an ephemeral
// port per guest port. It returns one mapping per guest port.
func ParsePort(spec string) ([]PortMapping, error) {
	bad := func(why string) ([]PortMapping, error) {
		return nil, invalid(fmt.Sprintf("invalid port %q: %s; want [ip:][hostPort[-end]]:guestPort[-end][/tcp|/udp], ports 1-65535", spec, why))
	}
	rest, proto, hasProto := strings.Cut(spec, "/")
	if !hasProto {
		proto = TCP
	}
	proto = strings.ToLower(proto)
	if proto != TCP && proto != UDP {
		return bad(fmt.Sprintf("protocol %q is not tcp or udp", proto))
	}
	var ip, host, guest string
	if strings.HasPrefix(rest, "[") {
		return bad("IPv6 host addresses are not supported by user-mode networking")
	}
	parts := strings.Split(rest, ":")
	switch len(parts) {
	case 1:
		guest = parts[0]
	case 2:
		host, guest = parts[0], parts[1]
	case 3:
		ip, host, guest = parts[0], parts[1], parts[2]
		if ip == "" {
			return bad("empty host address")
		}
	default:
		return bad("too many ':'")
	}
	if ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil || !a.Is4() {
			return bad(fmt.Sprintf("host address %q is not an IPv4 address", ip))
		}
		ip = a.String()
	}
	gFirst, gLast, err := parseRange(guest)
	if err != nil {
		return bad("guest port: " + err.Error())
	}
	n := gLast - gFirst + 1
	hFirst := 0
	if host != "" {
		hf, hl, err := parseRange(host)
		if err != nil {
			return bad("host port: " + err.Error())
		}
		if hl-hf+1 != n {
			return bad(fmt.Sprintf("host range %s has %d ports and guest range %s has %d: they must be the same length", host, hl-hf+1, guest, n))
		}
		hFirst = hf
	}
	out := make([]PortMapping, 0, n)
	for i := range n {
		m := PortMapping{HostIP: ip, GuestPort: gFirst + i, Protocol: proto}
		if hFirst != 0 {
			m.HostPort = hFirst + i
		}
		out = append(out, m)
	}
	return out, nil
}

// parseRange parses "80" or "8000-8009".
func parseRange(s string) (first, last int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if first, err = parseNum(a); err != nil {
		return 0, 0, err
	}
	if !isRange {
		return first, first, nil
	}
	if last, err = parseNum(b); err != nil {
		return 0, 0, err
	}
	if last < first {
		return 0, 0, fmt.Errorf("range %s ends before it starts", s)
	}
	return first, last, nil
}

func parseNum(s string) (int, error) {
	if s == "" {
		return 0, errors.New("missing")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a number", s)
		}
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 || v > 65535 {
		return 0, fmt.Errorf("%s is out of range", s)
	}
	return v, nil
}

// ParsePorts parses every -p value and checks the whole set (Validate).
func ParsePorts(specs []string) ([]PortMapping, error) {
	var out []PortMapping
	for _, s := range specs {
		m, err := ParsePort(s)
		if err != nil {
			return nil, err
		}
		out = append(out, m...)
	}
	if err := Validate(out); err != nil {
		return nil, err
	}
	return out, nil
}

// Validate checks mappings as a set (as they arrive over the API, not only
// from ParsePort): each well formed, and no host address and port published
// twice for one protocol. A guest port may be published more than once.
func Validate(ms []PortMapping) error {
	seen := map[string]bool{}
	for _, m := range ms {
		if m.Protocol != TCP && m.Protocol != UDP {
			return invalid(fmt.Sprintf("invalid port %s: protocol %q is not tcp or udp", PortKey(m), m.Protocol))
		}
		if m.GuestPort < 1 || m.GuestPort > 65535 {
			return invalid(fmt.Sprintf("invalid port %s: guest port %d is out of range 1-65535", PortKey(m), m.GuestPort))
		}
		if m.HostPort < 0 || m.HostPort > 65535 {
			return invalid(fmt.Sprintf("invalid port %s: host port %d is out of range 1-65535 (0: ephemeral)", PortKey(m), m.HostPort))
		}
		if m.HostIP != "" {
			a, err := netip.ParseAddr(m.HostIP)
			if err != nil || !a.Is4() {
				return invalid(fmt.Sprintf("invalid port %s: host address %q is not an IPv4 address", PortKey(m), m.HostIP))
			}
		}
		if m.HostPort == 0 {
			continue
		}
		k := m.Protocol + ":" + HostIP(m) + ":" + strconv.Itoa(m.HostPort)
		if seen[k] {
			return invalid(fmt.Sprintf("invalid ports: %s port %d on %s is published twice", m.Protocol, m.HostPort, HostIP(m)))
		}
		seen[k] = true
	}
	// 0.0.0.0:N and a.b.c.d:N for the same N conflict on the host too.
	for k := range seen {
		proto, rest, _ := strings.Cut(k, ":")
		ip, port, _ := strings.Cut(rest, ":")
		if ip != DefaultHostIP && seen[proto+":"+DefaultHostIP+":"+port] {
			return invalid(fmt.Sprintf("invalid ports: %s port %s is published on %s and on all addresses", proto, port, ip))
		}
	}
	return nil
}

// Sort orders mappings by guest port, protocol, then host address and port,
// the order docker port prints them in.
func Sort(ms []PortMapping) {
	sort.SliceStable(ms, func(i, j int) bool {
		a, b := ms[i], ms[j]
		if a.GuestPort != b.GuestPort {
			return a.GuestPort < b.GuestPort
		}
		if a.Protocol != b.Protocol {
			return a.Protocol < b.Protocol
		}
		if HostIP(a) != HostIP(b) {
			return HostIP(a) < HostIP(b)
		}
		return a.HostPort < b.HostPort
	})
}

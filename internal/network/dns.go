package network

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// DNSZone is what the name server on one bridge's gateway answers: A
// records for the names of the network's VMs; with Egress, other names are
// forwarded to the host's resolvers, else answered NXDOMAIN.
type DNSZone struct {
	Network string
	Gateway netip.Addr
	Egress  bool
	// Records maps lower-case VM names to their addresses.
	Records map[string]netip.Addr
}

// DNS serves DNS over UDP and TCP on the gateway address of every bridge
// network.
// It lives in the daemon: VMs resolve each other's names only while the
// daemon runs.
type DNS struct {
	log *slog.Logger
	// Upstream returns the host's resolvers ("ip:53"); nil reads
	// /etc/resolv.conf.
	Upstream func() []string

	mu      sync.Mutex
	servers map[netip.Addr]*dnsServer
}

type dnsServer struct {
	conn *net.UDPConn
	tcp  *net.TCPListener
	// work and conns are semaphores: the queries answered at once, and the
	// TCP connections served at once. A flood from a hostile guest is
	// dropped past them (a resolver retries) instead of costing the
	// daemon a goroutine and an upstream socket per datagram.
	work  chan struct{}
	conns chan struct{}
	mu    sync.Mutex
	zone  DNSZone
}

// Bounds of one name server: what a VM (or all of one network's) can make
// the daemon hold.
const (
	dnsWorkers  = 32
	dnsTCPConns = 16
)

func (s *dnsServer) close() {
	s.conn.Close()
	s.tcp.Close()
}

func (s *dnsServer) currentZone() DNSZone {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.zone
}

// NewDNS returns a DNS that serves nothing yet.
func NewDNS(log *slog.Logger) *DNS {
	return &DNS{log: log, servers: map[netip.Addr]*dnsServer{}}
}

// Update makes the set of servers match zones: a server for each zone's
// gateway (bound now; the bridge must have its address), none for gateways
// no zone has. It returns the first error binding a server, after trying
// them all.
func (d *DNS) Update(zones []DNSZone) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := map[netip.Addr]DNSZone{}
	for _, z := range zones {
		want[z.Gateway] = z
	}
	for gw, s := range d.servers {
		if _, ok := want[gw]; !ok {
			s.close()
			delete(d.servers, gw)
		}
	}
	var first error
	for gw, z := range want {
		if s, ok := d.servers[gw]; ok {
			s.mu.Lock()
			s.zone = z
			s.mu.Unlock()
			continue
		}
		addr := netip.AddrPortFrom(gw, 53)
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		var tcp *net.TCPListener
		if err == nil {
			if tcp, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr)); err != nil {
				conn.Close()
			}
		}
		if err != nil {
			if first == nil {
				first = fmt.Errorf("serving DNS for network %s on %s:53: %w", z.Network, gw, err)
			}
			continue
		}
		s := &dnsServer{conn: conn, tcp: tcp, zone: z, work: make(chan struct{}, dnsWorkers), conns: make(chan struct{}, dnsTCPConns)}
		d.servers[gw] = s
		go d.serve(s)
		go d.serveTCP(s)
	}
	return first
}

// Close stops every server.
func (d *DNS) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for gw, s := range d.servers {
		s.close()
		delete(d.servers, gw)
	}
}

func (d *DNS) serve(s *dnsServer) {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				d.log.Warn("DNS server stopped", "addr", s.conn.LocalAddr(), "err", err)
			}
			return
		}
		select {
		case s.work <- struct{}{}:
		default:
			continue // every worker is busy: dropped, as a full queue would
		}
		z := s.currentZone()
		q := append([]byte(nil), buf[:n]...)
		go func() {
			defer func() { <-s.work }()
			resp := d.answer(z, q, false)
			if resp != nil {
				_, _ = s.conn.WriteToUDPAddrPort(resp, from)
			}
		}()
	}
}

// tcpIdle is how long a DNS-over-TCP connection may stay idle.
const tcpIdle = 10 * time.Second

// serveTCP serves DNS over TCP (RFC 7766): what a resolver falls back to
// when a UDP answer was truncated. Each message goes with a two-byte
// length; a connection may carry several queries, answered in order.
func (d *DNS) serveTCP(s *dnsServer) {
	for {
		c, err := s.tcp.AcceptTCP()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				d.log.Warn("DNS server stopped", "addr", s.tcp.Addr(), "err", err)
			}
			return
		}
		select {
		case s.conns <- struct{}{}:
		default:
			c.Close() // too many at once: the client may come back
			continue
		}
		go func() {
			defer func() { <-s.conns }()
			defer c.Close()
			for {
				c.SetDeadline(time.Now().Add(tcpIdle))
				q, err := readTCPMessage(c)
				if err != nil {
					return
				}
				resp := d.answer(s.currentZone(), q, true)
				if resp == nil || writeTCPMessage(c, resp) != nil {
					return
				}
			}
		}()
	}
}

func readTCPMessage(r io.Reader) ([]byte, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(n[:]))
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func writeTCPMessage(w io.Writer, m []byte) error {
	if len(m) > 0xffff {
		return fmt.Errorf("DNS message of %d bytes is too long for TCP", len(m))
	}
	_, err := w.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(m))), m...))
	return err
}

// answer returns the reply to one query, nil to stay silent. A query that
// came over TCP is forwarded over TCP.
func (d *DNS) answer(z DNSZone, q []byte, tcp bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return reply(h, qs, dnsmessage.RCodeFormatError, nil)
	}
	question := qs[0]
	name := strings.ToLower(strings.TrimSuffix(question.Name.String(), "."))
	if ip, ok := z.Records[name]; ok && question.Class == dnsmessage.ClassINET {
		var ans []dnsmessage.Resource
		if question.Type == dnsmessage.TypeA || question.Type == dnsmessage.TypeALL {
			ans = append(ans, dnsmessage.Resource{
				Header: dnsmessage.ResourceHeader{Name: question.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 0},
				Body:   &dnsmessage.AResource{A: ip.As4()},
			})
		}
		return reply(h, qs, dnsmessage.RCodeSuccess, ans)
	}
	if z.Egress {
		if r := d.forward(q, tcp); r != nil {
			return r
		}
		return reply(h, qs, dnsmessage.RCodeServerFailure, nil)
	}
	return reply(h, qs, dnsmessage.RCodeNameError, nil)
}

func reply(h dnsmessage.Header, qs []dnsmessage.Question, rc dnsmessage.RCode, ans []dnsmessage.Resource) []byte {
	m := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: h.ID, Response: true, Authoritative: rc == dnsmessage.RCodeSuccess, RecursionDesired: h.RecursionDesired, RCode: rc},
		Questions: qs,
		Answers:   ans,
	}
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

// forward relays a query to the host's resolvers, over UDP or TCP, and
// returns the first answer.
func (d *DNS) forward(q []byte, tcp bool) []byte {
	ups := d.Upstream
	if ups == nil {
		ups = hostResolvers
	}
	for _, u := range ups() {
		if r := forwardTo(u, q, tcp); r != nil {
			return r
		}
	}
	return nil
}

func forwardTo(upstream string, q []byte, tcp bool) []byte {
	proto := "udp"
	if tcp {
		proto = "tcp"
	}
	c, err := net.DialTimeout(proto, upstream, 2*time.Second)
	if err != nil {
		return nil
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if tcp {
		if writeTCPMessage(c, q) != nil {
			return nil
		}
		r, err := readTCPMessage(c)
		if err != nil {
			return nil
		}
		return r
	}
	buf := make([]byte, 4096)
	if _, err := c.Write(q); err != nil {
		return nil
	}
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// hostResolvers reads the nameservers of /etc/resolv.conf.
func hostResolvers() []string {
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && fs[0] == "nameserver" {
			if a, err := netip.ParseAddr(fs[1]); err == nil && a.Is4() {
				out = append(out, net.JoinHostPort(a.String(), "53"))
			}
		}
	}
	return out
}

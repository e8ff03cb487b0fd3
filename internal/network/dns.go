package network

import (
	"bufio"
	"errors"
	"fmt"
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

// DNS serves DNS over UDP on the gateway address of every bridge network.
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
	mu   sync.Mutex
	zone DNSZone
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
			s.conn.Close()
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
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw, 53)))
		if err != nil {
			if first == nil {
				first = fmt.Errorf("serving DNS for network %s on %s:53: %w", z.Network, gw, err)
			}
			continue
		}
		s := &dnsServer{conn: conn, zone: z}
		d.servers[gw] = s
		go d.serve(s)
	}
	return first
}

// Close stops every server.
func (d *DNS) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for gw, s := range d.servers {
		s.conn.Close()
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
		s.mu.Lock()
		z := s.zone
		s.mu.Unlock()
		q := append([]byte(nil), buf[:n]...)
		go func() {
			resp := d.answer(z, q)
			if resp != nil {
				_, _ = s.conn.WriteToUDPAddrPort(resp, from)
			}
		}()
	}
}

// answer returns the reply to one query, nil to stay silent.
func (d *DNS) answer(z DNSZone, q []byte) []byte {
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
		if r := d.forward(q); r != nil {
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

// forward relays a query to the host's resolvers and returns the first
// answer.
func (d *DNS) forward(q []byte) []byte {
	ups := d.Upstream
	if ups == nil {
		ups = hostResolvers
	}
	for _, u := range ups() {
		c, err := net.DialTimeout("udp", u, 2*time.Second)
		if err != nil {
			continue
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 4096)
		if _, err := c.Write(q); err == nil {
			if n, err := c.Read(buf); err == nil {
				c.Close()
				return buf[:n]
			}
		}
		c.Close()
	}
	return nil
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

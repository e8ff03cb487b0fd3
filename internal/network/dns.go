package network

import (
	"bufio"
	"crypto/rand"
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

	"kiln.dev/kiln/internal/errdefs"
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
	// forwardTimeout is how long a forwarded query waits for a resolver's
	// answer (over TCP, to connect and be answered) before the next
	// resolver is tried.
	forwardTimeout time.Duration

	mu      sync.Mutex
	servers map[netip.Addr]*dnsServer

	// fwdMu guards fwd, the socket every server forwards UDP queries
	// through: made when first needed, again if it failed.
	fwdMu sync.Mutex
	fwd   *forwarder
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
	// limit spreads the workers among the VMs: a source past its rate has
	// its queries dropped before they take one.
	limit *rateLimiter
	mu    sync.Mutex
	zone  DNSZone
}

// Bounds of one name server: what a VM (or all of one network's) can make
// the daemon hold, and how many queries a second one address may ask
// (with a burst of dnsBurst).
const (
	dnsWorkers  = 32
	dnsTCPConns = 16
	dnsRate     = 100
	dnsBurst    = 200
)

func (s *dnsServer) close() {
	s.conn.Close()
	s.tcp.Close()
}

// rateLimiter is a token bucket per source address: each holds up to
// burst tokens, gains rate a second, and a query takes one. Sources that
// were quiet long enough to fill up again are forgotten when the table is
// full; a new source that finds it full of busy ones is refused.
type rateLimiter struct {
	rate, burst float64
	mu          sync.Mutex
	buckets     map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// maxSources bounds the sources a rateLimiter remembers.
const maxSources = 4096

func newRateLimiter(rate, burst float64) *rateLimiter {
	return &rateLimiter{rate: rate, burst: burst, buckets: map[netip.Addr]*bucket{}}
}

// allow takes a token of a's bucket at now, and reports whether there was
// one.
func (l *rateLimiter) allow(a netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[a]
	if b == nil {
		if len(l.buckets) >= maxSources {
			full := time.Duration(l.burst / l.rate * float64(time.Second))
			for k, o := range l.buckets {
				if now.Sub(o.last) >= full {
					delete(l.buckets, k)
				}
			}
			if len(l.buckets) >= maxSources {
				return false
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[a] = b
	}
	if now.After(b.last) {
		b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (s *dnsServer) currentZone() DNSZone {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.zone
}

// NewDNS returns a DNS that serves nothing yet.
func NewDNS(log *slog.Logger) *DNS {
	return &DNS{log: log, servers: map[netip.Addr]*dnsServer{}, forwardTimeout: 2 * time.Second}
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
		s := &dnsServer{conn: conn, tcp: tcp, zone: z, work: make(chan struct{}, dnsWorkers), conns: make(chan struct{}, dnsTCPConns), limit: newRateLimiter(dnsRate, dnsBurst)}
		d.servers[gw] = s
		go d.serve(s)
		go d.serveTCP(s)
	}
	return first
}

// Close stops every server, and the forwarding.
func (d *DNS) Close() {
	d.mu.Lock()
	for gw, s := range d.servers {
		s.close()
		delete(d.servers, gw)
	}
	d.mu.Unlock()
	d.fwdMu.Lock()
	if d.fwd != nil {
		d.fwd.conn.Close()
		d.fwd = nil
	}
	d.fwdMu.Unlock()
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
		if !s.limit.allow(from.Addr().Unmap(), time.Now()) {
			continue // past its rate: dropped, as a lost datagram would be
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
		from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		go func() {
			defer func() { <-s.conns }()
			defer c.Close()
			for {
				c.SetDeadline(time.Now().Add(tcpIdle))
				q, err := readTCPMessage(c)
				if err != nil || !s.limit.allow(from, time.Now()) {
					return // past its rate, the connection goes
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
// returns the first answer. UDP queries all go through one socket (a
// forwarder); a TCP query dials its resolver, as the server has at most
// dnsTCPConns of them at once.
func (d *DNS) forward(q []byte, tcp bool) []byte {
	ups := d.Upstream
	if ups == nil {
		ups = hostResolvers
	}
	for _, u := range ups() {
		var r []byte
		if tcp {
			r = forwardTCP(u, q, d.forwardTimeout)
		} else if to, err := netip.ParseAddrPort(u); err == nil {
			if f := d.forwarder(); f != nil {
				r = f.exchange(to, q, d.forwardTimeout)
			}
		}
		if r != nil {
			return r
		}
	}
	return nil
}

func forwardTCP(addr string, q []byte, timeout time.Duration) []byte {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if writeTCPMessage(c, q) != nil {
		return nil
	}
	r, err := readTCPMessage(c)
	if err != nil {
		return nil
	}
	return r
}

// forwarder returns the socket UDP queries are forwarded through, made if
// there is none or the last one failed; nil if it cannot be made.
func (d *DNS) forwarder() *forwarder {
	d.fwdMu.Lock()
	defer d.fwdMu.Unlock()
	if d.fwd != nil && !d.fwd.stopped() {
		return d.fwd
	}
	f, err := newForwarder()
	if err != nil {
		d.log.Warn("cannot forward DNS queries", "err", err)
		return nil
	}
	d.fwd = f
	return f
}

// forwarder is one UDP socket that queries are forwarded through, to any
// resolver. Each query goes out under an ID of its own, picked at random
// among those not pending, and its answer is known by that ID, the
// address it comes from and its question: anything else that arrives is
// dropped. A query waits for its answer until its deadline, then its
// entry goes: an upstream that never answers holds nothing longer.
type forwarder struct {
	conn    *net.UDPConn
	done    chan struct{} // closed when the socket stops reading
	mu      sync.Mutex
	pending map[uint16]*pendingQuery
}

type pendingQuery struct {
	to       netip.AddrPort
	question dnsmessage.Question
	answer   chan []byte // one answer at most: never blocks the reader
}

// maxPending bounds the queries waiting at once, well below the 65536
// IDs. Each is held by a worker of a name server, so it is reached only
// with over a hundred networks' servers all waiting.
const maxPending = 4096

func newForwarder() (*forwarder, error) {
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, fmt.Errorf("opening a socket to forward DNS queries: %w", err)
	}
	f := &forwarder{conn: conn, done: make(chan struct{}), pending: map[uint16]*pendingQuery{}}
	go f.read()
	return f, nil
}

func (f *forwarder) stopped() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// exchange sends q to a resolver and returns its answer, with q's ID; nil
// if none came by the deadline.
func (f *forwarder) exchange(to netip.AddrPort, q []byte, timeout time.Duration) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil
	}
	question, err := p.Question()
	if err != nil {
		return nil
	}
	pq := &pendingQuery{to: unmapped(to), question: question, answer: make(chan []byte, 1)}
	id, ok := f.add(pq)
	if !ok {
		return nil
	}
	defer f.remove(id, pq)
	out := binary.BigEndian.AppendUint16(nil, id)
	out = append(out, q[2:]...)
	if _, err := f.conn.WriteToUDPAddrPort(out, pq.to); err != nil {
		return nil
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-pq.answer:
		binary.BigEndian.PutUint16(r, h.ID)
		return r
	case <-t.C:
	case <-f.done:
	}
	return nil
}

// add files pq under a free random ID.
func (f *forwarder) add(pq *pendingQuery) (uint16, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pending) >= maxPending {
		return 0, false
	}
	for {
		var b [2]byte
		rand.Read(b[:])
		id := binary.BigEndian.Uint16(b[:])
		if f.pending[id] == nil {
			f.pending[id] = pq
			return id, true
		}
	}
}

func (f *forwarder) remove(id uint16, pq *pendingQuery) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending[id] == pq {
		delete(f.pending, id)
	}
}

// read hands each answer to the query it answers, until the socket
// closes or fails.
func (f *forwarder) read() {
	defer close(f.done)
	defer f.conn.Close()
	buf := make([]byte, 0xffff)
	for {
		n, from, err := f.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil || !h.Response {
			continue
		}
		question, err := p.Question()
		if err != nil {
			continue
		}
		id := binary.BigEndian.Uint16(buf)
		f.mu.Lock()
		pq := f.pending[id]
		if pq == nil || pq.to != unmapped(from) || !sameQuestion(pq.question, question) {
			f.mu.Unlock()
			continue
		}
		delete(f.pending, id)
		f.mu.Unlock()
		pq.answer <- append([]byte(nil), buf[:n]...)
	}
}

func unmapped(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

func sameQuestion(a, b dnsmessage.Question) bool {
	return a.Type == b.Type && a.Class == b.Class && strings.EqualFold(a.Name.String(), b.Name.String())
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

// ValidateDNSName checks a name a VM is given on its network's DNS (an
// alias): dot-separated labels of letters, digits, '-' and '_', each 1 to
// 63 long and not starting with '-', 253 at most in all.
func ValidateDNSName(name string) error {
	bad := func(why string) error {
		return errdefs.Invalid(fmt.Sprintf("invalid network alias %q: %s (want labels of letters, digits, '-' and '_', like web or db.internal)", name, why))
	}
	if name == "" || len(name) > 253 {
		return bad("want 1 to 253 characters")
	}
	for _, l := range strings.Split(name, ".") {
		if l == "" || len(l) > 63 {
			return bad("each dot-separated label is 1 to 63 characters")
		}
		if l[0] == '-' {
			return bad("a label may not start with '-'")
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return bad(fmt.Sprintf("%q is not allowed", c))
			}
		}
	}
	return nil
}

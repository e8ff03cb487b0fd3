package network

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/dns/dnsmessage"

	"kiln.dev/kiln/internal/errdefs"
)

func query(t *testing.T, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	m := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: 7, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}},
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDNSAnswer(t *testing.T) {
	d := NewDNS(slog.New(slog.DiscardHandler))
	upstreamAsked := 0
	d.Upstream = func() []string { upstreamAsked++; return nil }
	zone := DNSZone{Network: "n", Records: map[string]netip.Addr{"web": netip.MustParseAddr("10.99.0.2")}}
	for _, tt := range []struct {
		name   string
		typ    dnsmessage.Type
		egress bool
		rcode  dnsmessage.RCode
		a      string
	}{
		{"web.", dnsmessage.TypeA, false, dnsmessage.RCodeSuccess, "10.99.0.2"},
		{"WEB.", dnsmessage.TypeA, false, dnsmessage.RCodeSuccess, "10.99.0.2"},
		{"web.", dnsmessage.TypeAAAA, false, dnsmessage.RCodeSuccess, ""},
		{"db.", dnsmessage.TypeA, false, dnsmessage.RCodeNameError, ""},
		{"example.org.", dnsmessage.TypeA, false, dnsmessage.RCodeNameError, ""},
		// With egress an unknown name goes upstream; with no upstream
		// answering, SERVFAIL.
		{"example.org.", dnsmessage.TypeA, true, dnsmessage.RCodeServerFailure, ""},
	} {
		z := zone
		z.Egress = tt.egress
		b := d.answer(z, query(t, tt.name, tt.typ), false)
		var m dnsmessage.Message
		if err := m.Unpack(b); err != nil {
			t.Fatalf("%s: unpacking the reply: %v", tt.name, err)
		}
		got := ""
		for _, a := range m.Answers {
			if r, ok := a.Body.(*dnsmessage.AResource); ok {
				got = netip.AddrFrom4(r.A).String()
			}
		}
		if m.Header.ID != 7 || !m.Header.Response || m.Header.RCode != tt.rcode || got != tt.a {
			t.Errorf("%s %v egress=%v: id %d rcode %v answer %q; want rcode %v answer %q", tt.name, tt.typ, tt.egress, m.Header.ID, m.Header.RCode, got, tt.rcode, tt.a)
		}
	}
	if upstreamAsked != 1 {
		t.Errorf("upstream asked %d times, want once (only with egress)", upstreamAsked)
	}
}

func TestDNSForwardsWithEgress(t *testing.T) {
	up, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	// The upstream answers every query with 192.0.2.1.
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := up.ReadFromUDP(buf)
			if err != nil {
				return
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:n]) != nil {
				continue
			}
			m.Header.Response = true
			m.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET},
				Body:   &dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}},
			}}
			b, _ := m.Pack()
			up.WriteToUDP(b, from)
		}
	}()
	d := NewDNS(slog.New(slog.DiscardHandler))
	d.Upstream = func() []string { return []string{up.LocalAddr().String()} }
	b := d.answer(DNSZone{Network: "n", Egress: true}, query(t, "example.org.", dnsmessage.TypeA), false)
	var m dnsmessage.Message
	if err := m.Unpack(b); err != nil || len(m.Answers) != 1 || m.Header.ID != 7 {
		t.Fatalf("forwarded answer = %+v, %v", m, err)
	}
	if a := m.Answers[0].Body.(*dnsmessage.AResource).A; a != [4]byte{192, 0, 2, 1} {
		t.Errorf("forwarded answer %v, want the upstream's 192.0.2.1", a)
	}
}

// The server on a gateway answers over UDP and over TCP (several queries
// on one connection), forwards TCP queries over TCP, and stops listening
// when its network goes.
func TestDNSServesUDPAndTCP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the tests as root")
	}
	// An upstream that answers over TCP only, with 192.0.2.7.
	up, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			q, err := readTCPMessage(c)
			var m dnsmessage.Message
			if err == nil && m.Unpack(q) == nil {
				m.Header.Response = true
				m.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET},
					Body:   &dnsmessage.AResource{A: [4]byte{192, 0, 2, 7}},
				}}
				b, _ := m.Pack()
				writeTCPMessage(c, b)
			}
			c.Close()
		}
	}()

	// The name server's own forwarding runs on threads outside the test's
	// namespace, so the upstream listens on the host's loopback.
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNewNetns(t, func() { dnsServesUDPAndTCP(t, up.Addr().String()) })
	}()
	<-done
}

// loopbackDNS brings lo up in the current namespace and serves, on
// 127.0.0.1:53, a zone with egress where "web" is 10.99.0.2 and other names
// go to upstream; nil (after reporting why) when it cannot.
func loopbackDNS(t *testing.T, upstream string) *DNS {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		t.Errorf("bringing lo up: %v", err)
		return nil
	}
	d := NewDNS(slog.New(slog.DiscardHandler))
	d.Upstream = func() []string { return []string{upstream} }
	zone := DNSZone{Network: "n", Gateway: netip.MustParseAddr("127.0.0.1"), Egress: true, Records: map[string]netip.Addr{"web": netip.MustParseAddr("10.99.0.2")}}
	if err := d.Update([]DNSZone{zone}); err != nil {
		t.Error(err)
		return nil
	}
	return d
}

func dnsServesUDPAndTCP(t *testing.T, upstream string) {
	d := loopbackDNS(t, upstream)
	if d == nil {
		return
	}
	defer d.Close()

	aOf := func(b []byte) string {
		var m dnsmessage.Message
		if err := m.Unpack(b); err != nil || len(m.Answers) != 1 {
			return fmt.Sprintf("no answer (%v, %+v)", err, m.Header)
		}
		return netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A).String()
	}
	u, err := net.Dial("udp4", "127.0.0.1:53")
	if err != nil {
		t.Error(err)
		return
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	if _, err := u.Write(query(t, "web.", dnsmessage.TypeA)); err != nil {
		t.Error(err)
	} else if n, err := u.Read(buf); err != nil || aOf(buf[:n]) != "10.99.0.2" {
		t.Errorf("UDP: %s, %v; want 10.99.0.2", aOf(buf[:n]), err)
	}

	c, err := net.Dial("tcp4", "127.0.0.1:53")
	if err != nil {
		t.Errorf("DNS over TCP: %v", err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	for _, tt := range []struct{ name, want string }{{"web.", "10.99.0.2"}, {"example.org.", "192.0.2.7"}} {
		if err := writeTCPMessage(c, query(t, tt.name, dnsmessage.TypeA)); err != nil {
			t.Errorf("TCP %s: %v", tt.name, err)
			return
		}
		b, err := readTCPMessage(c)
		if err != nil || aOf(b) != tt.want {
			t.Errorf("TCP %s: %s, %v; want %s", tt.name, aOf(b), err, tt.want)
		}
	}

	if err := d.Update(nil); err != nil {
		t.Error(err)
	}
	if c, err := net.Dial("tcp4", "127.0.0.1:53"); err == nil {
		c.Close()
		t.Error("the TCP server still listens after its network went")
	}
}

// TestDNSFloodIsBounded plays a hostile guest that floods its gateway's
// name server with queries that must go upstream to a resolver that never
// answers, and holds TCP connections open: the server's goroutines stay
// within its worker and connection bounds, and a query for a VM's name is
// still answered when the flood stops.
func TestDNSFloodIsBounded(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the tests as root")
	}
	// An upstream that takes queries and never answers.
	up, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNewNetns(t, func() { dnsFlood(t, up.LocalAddr().String()) })
	}()
	<-done
}

func dnsFlood(t *testing.T, upstream string) {
	d := loopbackDNS(t, upstream)
	if d == nil {
		return
	}
	defer d.Close()
	base := goruntime.NumGoroutine()
	u, err := net.Dial("udp4", "127.0.0.1:53")
	if err != nil {
		t.Error(err)
		return
	}
	defer u.Close()
	q := query(t, "elsewhere.example.", dnsmessage.TypeA)
	peak := 0
	for i := range 3000 {
		u.Write(q)
		if i%100 == 0 {
			peak = max(peak, goruntime.NumGoroutine()-base)
		}
	}
	var held []net.Conn
	for range 3 * dnsTCPConns {
		c, err := net.Dial("tcp4", "127.0.0.1:53")
		if err != nil {
			break
		}
		held = append(held, c)
	}
	time.Sleep(200 * time.Millisecond) // let the server take them all; nothing to wait on
	peak = max(peak, goruntime.NumGoroutine()-base)
	if peak > dnsWorkers+dnsTCPConns+8 {
		t.Errorf("the flood made the name server hold %d goroutines, bound %d + %d", peak, dnsWorkers, dnsTCPConns)
	}
	open := 0
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			open++ // served: waiting for a query
		}
		c.Close()
	}
	if open > dnsTCPConns {
		t.Errorf("%d TCP connections held open at once, bound %d", open, dnsTCPConns)
	}
	// The flood's queries time out upstream; then a VM's name is answered.
	deadline := time.Now().Add(15 * time.Second)
	buf := make([]byte, 1500)
	for {
		u.Write(query(t, "web.", dnsmessage.TypeA))
		u.SetReadDeadline(time.Now().Add(time.Second))
		n, err := u.Read(buf)
		var m dnsmessage.Message
		if err == nil && m.Unpack(buf[:n]) == nil && len(m.Answers) == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("after the flood a VM's name is not answered: %v", err)
			return
		}
	}
}

func TestRateLimiter(t *testing.T) {
	l := newRateLimiter(100, 200)
	a, b := netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("10.99.0.3")
	now := time.Unix(1000, 0)
	allowed := func(src netip.Addr, n int, at time.Time) int {
		ok := 0
		for range n {
			if l.allow(src, at) {
				ok++
			}
		}
		return ok
	}
	if got := allowed(a, 1000, now); got != 200 {
		t.Errorf("a burst of 1000 let %d through, want the 200 of the bucket", got)
	}
	if got := allowed(b, 10, now); got != 10 {
		t.Errorf("another source got %d of 10 while the first was limited", got)
	}
	// 100 a second: after 0.5 s, 50 more.
	if got := allowed(a, 1000, now.Add(500*time.Millisecond)); got != 50 {
		t.Errorf("after half a second %d more went through, want 50", got)
	}
	// A clock that goes back gives nothing.
	if got := allowed(a, 10, now); got != 0 {
		t.Errorf("a clock gone back gave %d tokens", got)
	}

	// The table is bounded: when it is full of busy sources a new one is
	// refused; sources quiet long enough to have filled up again make room.
	l = newRateLimiter(100, 200)
	for i := range maxSources {
		l.allow(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), now)
	}
	if l.allow(netip.MustParseAddr("10.1.0.1"), now.Add(time.Second)) {
		t.Error("a new source was let in while the table was full of busy ones")
	}
	if !l.allow(netip.MustParseAddr("10.1.0.1"), now.Add(2*time.Second)) || len(l.buckets) != 1 {
		t.Errorf("a new source after the others went quiet: %d buckets, want just its own", len(l.buckets))
	}
}

// fakeUpstream is a resolver on the host's loopback. It collects n queries,
// noting the source port and ID of each, then hands them to answer.
func fakeUpstream(t *testing.T, n int, answer func(c *net.UDPConn, from *net.UDPAddr, q dnsmessage.Message)) (addr string, ports, ids chan int) {
	t.Helper()
	up, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	ports, ids = make(chan int, n), make(chan int, n)
	go func() {
		type query struct {
			from *net.UDPAddr
			m    dnsmessage.Message
		}
		var got []query
		buf := make([]byte, 1500)
		for len(got) < n {
			k, from, err := up.ReadFromUDP(buf)
			if err != nil {
				return
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:k]) != nil {
				continue
			}
			got = append(got, query{from, m})
			ports <- from.Port
			ids <- int(m.Header.ID)
		}
		for i := len(got) - 1; i >= 0; i-- { // out of order
			answer(up, got[i].from, got[i].m)
		}
	}()
	return up.LocalAddr().String(), ports, ids
}

// answerA answers q with an A record for addr.
func answerA(c *net.UDPConn, to *net.UDPAddr, q dnsmessage.Message, addr [4]byte) {
	q.Header.Response = true
	q.Answers = []dnsmessage.Resource{{
		Header: dnsmessage.ResourceHeader{Name: q.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET},
		Body:   &dnsmessage.AResource{A: addr},
	}}
	b, _ := q.Pack()
	c.WriteToUDP(b, to)
}

// TestDNSForwardsThroughOneSocket: queries forwarded at once all leave
// from one socket, each under an ID of its own, and every answer (given
// in another order) goes back to its own query with the query's ID.
func TestDNSForwardsThroughOneSocket(t *testing.T) {
	const n = 40
	upstream, ports, ids := fakeUpstream(t, n, func(c *net.UDPConn, from *net.UDPAddr, q dnsmessage.Message) {
		// Each name's answer is its number: q3.example. is 192.0.2.3.
		var i byte
		fmt.Sscanf(q.Questions[0].Name.String(), "q%d.", &i)
		answerA(c, from, q, [4]byte{192, 0, 2, i})
	})
	d := NewDNS(slog.New(slog.DiscardHandler))
	defer d.Close()
	d.Upstream = func() []string { return []string{upstream} }
	errs := make(chan error, n)
	for i := range n {
		go func() {
			b := d.answer(DNSZone{Network: "n", Egress: true}, query(t, fmt.Sprintf("q%d.example.", i), dnsmessage.TypeA), false)
			var m dnsmessage.Message
			if err := m.Unpack(b); err != nil || len(m.Answers) != 1 || m.Header.ID != 7 {
				errs <- fmt.Errorf("q%d: answer %+v, %v", i, m, err)
				return
			}
			if a := m.Answers[0].Body.(*dnsmessage.AResource).A; a != [4]byte{192, 0, 2, byte(i)} {
				errs <- fmt.Errorf("q%d: answered %v, another query's answer", i, a)
				return
			}
			errs <- nil
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	seenPorts, seenIDs := map[int]bool{}, map[int]bool{}
	for range n {
		seenPorts[<-ports] = true
		seenIDs[<-ids] = true
	}
	if len(seenPorts) != 1 {
		t.Errorf("the upstream saw queries from %d source ports, want 1 (one socket)", len(seenPorts))
	}
	if len(seenIDs) != n {
		t.Errorf("the upstream saw %d IDs for %d queries pending at once, want one each", len(seenIDs), n)
	}
}

// TestDNSForwardToSilentUpstream plays a hostile upstream that never
// answers, with a forger that answers each query (its ID, its question)
// from another port and the upstream itself answering another question
// under the query's ID: every query fails at its deadline, nothing is left
// pending and no goroutine outlives the forwarding.
func TestDNSForwardToSilentUpstream(t *testing.T) {
	const n = 20
	forger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	upstream, _, _ := fakeUpstream(t, n, func(c *net.UDPConn, from *net.UDPAddr, q dnsmessage.Message) {
		answerA(forger, from, q, [4]byte{6, 6, 6, 6})
		q.Questions[0].Name = dnsmessage.MustNewName("other.example.")
		answerA(c, from, q, [4]byte{6, 6, 6, 6})
	})
	base := goruntime.NumGoroutine()
	d := NewDNS(slog.New(slog.DiscardHandler))
	d.forwardTimeout = 300 * time.Millisecond
	d.Upstream = func() []string { return []string{upstream} }
	start := time.Now()
	rcodes := make(chan dnsmessage.RCode, n)
	for i := range n {
		go func() {
			var m dnsmessage.Message
			m.Unpack(d.answer(DNSZone{Network: "n", Egress: true}, query(t, fmt.Sprintf("q%d.example.", i), dnsmessage.TypeA), false))
			rcodes <- m.Header.RCode
		}()
	}
	for range n {
		if rc := <-rcodes; rc != dnsmessage.RCodeServerFailure {
			t.Errorf("a query to a silent upstream got %v, want SERVFAIL", rc)
		}
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("the queries took %v, past their deadline of %v", el, d.forwardTimeout)
	}
	d.fwdMu.Lock()
	f := d.fwd
	d.fwdMu.Unlock()
	f.mu.Lock()
	left := len(f.pending)
	f.mu.Unlock()
	if left != 0 {
		t.Errorf("%d queries left pending past their deadline", left)
	}
	d.Close()
	deadline := time.Now().Add(5 * time.Second)
	for goruntime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			t.Errorf("%d goroutines outlive the forwarding", goruntime.NumGoroutine()-base)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDNSRateLimitsEachSource: a guest that floods its gateway's name
// server is answered at its rate and no more, while another source is
// answered in full meanwhile.
func TestDNSRateLimitsEachSource(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the tests as root")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNewNetns(t, func() { dnsRateLimits(t) })
	}()
	<-done
}

func dnsRateLimits(t *testing.T) {
	d := loopbackDNS(t, "127.0.0.1:1")
	if d == nil {
		return
	}
	defer d.Close()
	client := func(ip string) *net.UDPConn {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53})
		if err != nil {
			t.Error(err)
			return nil
		}
		return c
	}
	flooder, other := client("127.0.0.2"), client("127.0.0.3")
	if flooder == nil || other == nil {
		return
	}
	defer flooder.Close()
	defer other.Close()
	q := query(t, "web.", dnsmessage.TypeA)
	buf := make([]byte, 1500)
	// Batches smaller than the workers: without a rate limit every query
	// would be answered.
	start, answered := time.Now(), 0
	for range 40 {
		for range 25 {
			flooder.Write(q)
		}
		flooder.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for range 25 {
			if _, err := flooder.Read(buf); err != nil {
				break
			}
			answered++
		}
	}
	if bound := dnsBurst + int(time.Since(start).Seconds()*dnsRate) + 5; answered > bound {
		t.Errorf("a flood of 1000 queries got %d answers, bound %d", answered, bound)
	} else {
		t.Logf("a flood of 1000 queries got %d answers in %v", answered, time.Since(start))
	}
	for i := range 20 {
		other.Write(q)
		other.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := other.Read(buf); err != nil {
			t.Errorf("query %d of another source during the flood: %v", i, err)
			return
		}
	}
}

func TestValidateDNSName(t *testing.T) {
	for _, ok := range []string{"web", "db.internal", "my_service-1", strings.Repeat("a", 63)} {
		if err := ValidateDNSName(ok); err != nil {
			t.Errorf("ValidateDNSName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-web", "a..b", "we b", "web/x", strings.Repeat("a", 64), strings.Repeat("a.", 127) + "ab"} {
		err := ValidateDNSName(bad)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "network alias") {
			t.Errorf("ValidateDNSName(%q) = %v, want an invalid-argument error naming the alias", bad, err)
		}
	}
}

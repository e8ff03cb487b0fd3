package network

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
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
		b := d.answer(z, query(t, tt.name, tt.typ))
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
	b := d.answer(DNSZone{Network: "n", Egress: true}, query(t, "example.org.", dnsmessage.TypeA))
	var m dnsmessage.Message
	if err := m.Unpack(b); err != nil || len(m.Answers) != 1 || m.Header.ID != 7 {
		t.Fatalf("forwarded answer = %+v, %v", m, err)
	}
	if a := m.Answers[0].Body.(*dnsmessage.AResource).A; a != [4]byte{192, 0, 2, 1} {
		t.Errorf("forwarded answer %v, want the upstream's 192.0.2.1", a)
	}
}

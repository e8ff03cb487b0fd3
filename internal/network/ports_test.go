package network

import (
	"errors"
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

func TestParsePort(t *testing.T) {
	tests := []struct {
		spec string
		want []PortMapping
	}{
		{"80", []PortMapping{{GuestPort: 80, Protocol: TCP}}},
		{"8080:80", []PortMapping{{HostPort: 8080, GuestPort: 80, Protocol: TCP}}},
		{"127.0.0.1:8080:80", []PortMapping{{HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80, Protocol: TCP}}},
		{"127.0.0.1::80", []PortMapping{{HostIP: "127.0.0.1", GuestPort: 80, Protocol: TCP}}},
		{":80", []PortMapping{{GuestPort: 80, Protocol: TCP}}},
		{"5353:53/udp", []PortMapping{{HostPort: 5353, GuestPort: 53, Protocol: UDP}}},
		{"53/UDP", []PortMapping{{GuestPort: 53, Protocol: UDP}}},
		{"80/tcp", []PortMapping{{GuestPort: 80, Protocol: TCP}}},
		{"8000-8001:80-81", []PortMapping{
			{HostPort: 8000, GuestPort: 80, Protocol: TCP},
			{HostPort: 8001, GuestPort: 81, Protocol: TCP},
		}},
		{"10.0.0.1::7000-7001/udp", []PortMapping{
			{HostIP: "10.0.0.1", GuestPort: 7000, Protocol: UDP},
			{HostIP: "10.0.0.1", GuestPort: 7001, Protocol: UDP},
		}},
		{"65535:1", []PortMapping{{HostPort: 65535, GuestPort: 1, Protocol: TCP}}},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := ParsePort(tt.spec)
			if err != nil {
				t.Fatalf("ParsePort(%q): %v", tt.spec, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParsePort(%q) = %+v, want %+v", tt.spec, got, tt.want)
			}
		})
	}
}

func TestParsePortBad(t *testing.T) {
	tests := []struct{ spec, why string }{
		{"70000:80", "70000 is out of range"},
		{"80:70000", "70000 is out of range"},
		{"0:80", "0 is out of range"},
		{"abc", `"abc" is not a number`},
		{"80:80/sctp", `protocol "sctp" is not tcp or udp`},
		{"1-3:1-2", "must be the same length"},
		{"1-3:1", "must be the same length"},
		{"5-3:5-3", "ends before it starts"},
		{"", "guest port: missing"},
		{"80:", "guest port: missing"},
		{"1.2.3:80:80", "not an IPv4 address"},
		{"[::1]:80:80", "IPv6"},
		{"::1:80:80", "too many"},
		{":8080:80", "empty host address"},
		{"+80", "not a number"},
		{"80/", `protocol "" is not`},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			_, err := ParsePort(tt.spec)
			if err == nil {
				t.Fatalf("ParsePort(%q) succeeded", tt.spec)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.why) || !strings.Contains(msg, strconv.Quote(tt.spec)) || strings.Contains(msg, "\n") {
				t.Errorf("ParsePort(%q) = %q: want one line naming the value and %q", tt.spec, msg, tt.why)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("ParsePort(%q): error is not ErrInvalidArgument", tt.spec)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		ms   []PortMapping
		bad  string
	}{
		{"ok", []PortMapping{{HostPort: 80, GuestPort: 80, Protocol: TCP}, {HostPort: 80, GuestPort: 80, Protocol: UDP}}, ""},
		{"ephemeral twice", []PortMapping{{GuestPort: 80, Protocol: TCP}, {GuestPort: 80, Protocol: TCP}}, ""},
		{"twice", []PortMapping{{HostPort: 80, GuestPort: 80, Protocol: TCP}, {HostPort: 80, GuestPort: 81, Protocol: TCP}}, "published twice"},
		{"all and one", []PortMapping{{HostPort: 80, GuestPort: 80, Protocol: TCP}, {HostIP: "127.0.0.1", HostPort: 80, GuestPort: 81, Protocol: TCP}}, "and on all addresses"},
		{"proto", []PortMapping{{GuestPort: 80, Protocol: "sctp"}}, "not tcp or udp"},
		{"guest", []PortMapping{{GuestPort: 0, Protocol: TCP}}, "out of range"},
		{"host", []PortMapping{{HostPort: 70000, GuestPort: 1, Protocol: TCP}}, "out of range"},
		{"ip", []PortMapping{{HostIP: "::1", GuestPort: 1, Protocol: TCP}}, "not an IPv4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.ms)
			if (err != nil) != (tt.bad != "") || (err != nil && !strings.Contains(err.Error(), tt.bad)) {
				t.Errorf("Validate = %v, want %q", err, tt.bad)
			}
		})
	}
}

func TestString(t *testing.T) {
	m := PortMapping{HostPort: 8080, GuestPort: 80, Protocol: TCP}
	if got := FormatPort(m); got != "80/tcp -> 0.0.0.0:8080" {
		t.Errorf("String = %q", got)
	}
}

func TestMAC(t *testing.T) {
	a, b := MAC("abc"), MAC("abd")
	if a != MAC("abc") || a == b {
		t.Errorf("MAC not deterministic or not distinct: %s %s", a, b)
	}
	hw, err := net.ParseMAC(a)
	if err != nil || !strings.HasPrefix(a, "52:54:00:") || hw[0]&2 == 0 {
		t.Errorf("MAC(abc) = %s: want 52:54:00:xx:xx:xx, locally administered", a)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]string{"": ModeUser, "user": ModeUser, "none": ModeNone, "backend": "backend", "ns:/run/netns/pod1": "ns:/run/netns/pod1"} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v", in, got, err)
		}
	}
	if IsBridge(ModeUser) || IsBridge(ModeNone) || !IsBridge("backend") || IsBridge("ns:/run/netns/pod1") {
		t.Error("IsBridge is wrong")
	}
	if !IsNS("ns:/run/netns/pod1") || IsNS("backend") || NSPath("ns:/run/netns/pod1") != "/run/netns/pod1" {
		t.Error("IsNS or NSPath is wrong")
	}
	for _, bad := range []string{"bad/name", "-x", "bridge", "ns:", "ns:pod1", "ns:/run/netns/../x", "ns:/run/netns/"} {
		if _, err := ParseMode(bad); err == nil || !strings.Contains(err.Error(), `"`+bad+`"`) {
			t.Errorf("ParseMode(%s) = %v", bad, err)
		}
	}
}

func TestResolve(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	_, err = Resolve([]PortMapping{{HostIP: "127.0.0.1", HostPort: taken, GuestPort: 80, Protocol: TCP}})
	want := "port " + strconv.Itoa(taken) + " is already in use on 127.0.0.1"
	if err == nil || err.Error() != want || !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Resolve(taken) = %v, want %q (ErrConflict)", err, want)
	}
	got, err := Resolve([]PortMapping{
		{HostIP: "127.0.0.1", GuestPort: 80, Protocol: TCP},
		{HostIP: "127.0.0.1", GuestPort: 81, Protocol: TCP},
		{HostIP: "127.0.0.1", GuestPort: 53, Protocol: UDP},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got[0].HostPort == 0 || got[0].HostPort == got[1].HostPort || got[2].HostPort == 0 {
		t.Errorf("Resolve(ephemeral) = %+v: want distinct non-zero ports", got)
	}
	// Released: the port can be bound again.
	l2, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(got[0].HostPort))
	if err != nil {
		t.Errorf("port %d still held after Resolve: %v", got[0].HostPort, err)
	} else {
		l2.Close()
	}
}

func FuzzParsePort(f *testing.F) {
	for _, s := range []string{"80", "8080:80", "127.0.0.1:8080:80/udp", "1-3:1-2", "abc", "::80", "70000:80", "[::1]:1:1", "1-65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := ParsePort(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("ParsePort(%q): %v: want one line, ErrInvalidArgument", s, err)
			}
			return
		}
		if len(ms) == 0 || len(ms) > 65535 {
			t.Fatalf("ParsePort(%q) gave %d mappings", s, len(ms))
		}
		for _, m := range ms {
			if m.GuestPort < 1 || m.GuestPort > 65535 || m.HostPort < 0 || m.HostPort > 65535 || (m.Protocol != TCP && m.Protocol != UDP) {
				t.Fatalf("ParsePort(%q) gave %+v", s, m)
			}
		}
		if err := Validate(ms); err != nil {
			t.Fatalf("ParsePort(%q) gave mappings Validate refuses: %v", s, err)
		}
	})
}

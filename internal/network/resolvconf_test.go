package network

import (
	"net/netip"
	"slices"
	"testing"
)

func TestLoopbackResolvers(t *testing.T) {
	for _, tc := range []struct {
		name string
		conf string
		want []string
	}{
		{"empty", "", nil},
		{"systemd-resolved stub", "# This is /run/systemd/resolve/stub-resolv.conf\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n", []string{"127.0.0.53"}},
		{"no loopback", "nameserver 10.255.255.53\nnameserver 169.254.169.254\nnameserver fe80::1%eth0\n", nil},
		{"mixed, in order", "nameserver 1.1.1.1\nnameserver ::1\nnameserver 127.0.1.1\n", []string{"::1", "127.0.1.1"}},
		{"whole 127/8", "nameserver 127.255.0.9\n", []string{"127.255.0.9"}},
		{"tabs and spaces", "  nameserver\t127.0.0.1  \n", []string{"127.0.0.1"}},
		{"repeats once", "nameserver 127.0.0.1\nnameserver 127.0.0.1\n", []string{"127.0.0.1"}},
		{"zone and mapped dropped", "nameserver ::1%lo\nnameserver ::ffff:127.0.0.2\n", []string{"::1", "127.0.0.2"}},
		{"comments", "# nameserver 127.0.0.1\n; nameserver 127.0.0.2\nnameserver 127.0.0.3 # trailing\n", []string{"127.0.0.3"}},
		{"not an address", "nameserver localhost\nnameserver\nnameserver 127.0.0.1/8\n", nil},
		{"other keywords", "domain 127.0.0.1\nsearch 127.0.0.1\nnameservers 127.0.0.1\n", nil},
		{"no final newline", "nameserver 127.0.0.1", []string{"127.0.0.1"}},
		{"CRLF", "nameserver 127.0.0.1\r\n", []string{"127.0.0.1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []netip.Addr
			for _, s := range tc.want {
				want = append(want, netip.MustParseAddr(s))
			}
			if got := LoopbackResolvers([]byte(tc.conf)); !slices.Equal(got, want) {
				t.Errorf("LoopbackResolvers(%q) = %v, want %v", tc.conf, got, want)
			}
		})
	}
}

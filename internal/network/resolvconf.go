package network

import (
	"bufio"
	"bytes"
	"net/netip"
	"slices"
	"strings"
)

// LoopbackResolvers returns the loopback name servers (127.0.0.0/8, ::1) a
// resolv.conf text lists, in order and once each: the ones a VMM's slirp
// forwards its guest's DNS to on the host's loopback, which Guard.Resolvers
// must keep open. Other name servers are left out: the guard does not stand
// between a VMM and them. Zones (::1%lo) and the IPv4-mapped form are
// dropped, as the firewall sees neither; lines that are not a valid
// nameserver entry are skipped, as the C library skips them.
func LoopbackResolvers(resolvConf []byte) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(resolvConf))
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 || fs[0] != "nameserver" {
			continue // comments (# or ;) start with neither
		}
		a, err := netip.ParseAddr(fs[1])
		if err != nil {
			continue
		}
		a = a.WithZone("").Unmap()
		if a.IsLoopback() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

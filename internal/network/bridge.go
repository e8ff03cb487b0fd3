package network

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"

	"kiln.dev/kiln/internal/errdefs"
)

// ModeBridge is not a --network value: a VM on a bridge network has the
// network's name as its Network. It names the mode in docs and errors.
const ModeBridge = "bridge"

// Interface name prefixes: every link kiln makes carries one, so that
// reconcile can tell its own links (and only those) apart.
const (
	BridgePrefix = "kb-"
	TAPPrefix    = "kn-"
)

// ifNameMax is the longest interface name Linux takes (IFNAMSIZ - 1).
const ifNameMax = 15

// BridgeName is the host bridge of a network: a hash of its name, so that
// any network name fits IFNAMSIZ and the name of a removed network's
// bridge is not confused with another's.
func BridgeName(network string) string { return BridgePrefix + shortHash(network) }

// TAPName is the host TAP of a VM, from its ID.
func TAPName(vmID string) string { return TAPPrefix + shortHash(vmID) }

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])[:ifNameMax-3]
}

var netNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// ValidateNetworkName checks a network's name: like a VM's, and not one of
// the modes (user, none, bridge, host).
func ValidateNetworkName(name string) error {
	switch name {
	case ModeUser, ModeNone, ModeBridge, "host", "default":
		return errdefs.Invalid(fmt.Sprintf("invalid network name %q: reserved", name))
	}
	if !netNameRE.MatchString(name) {
		return errdefs.Invalid(fmt.Sprintf("invalid network name %q: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit", name))
	}
	return nil
}

// ParseSubnet checks a --subnet and --gateway: an IPv4 prefix of /8 to /30
// given by its network address, and a gateway inside it (default: its first
// host address) that is not its network or broadcast address.
func ParseSubnet(subnet, gateway string) (netip.Prefix, netip.Addr, error) {
	p, err := netip.ParsePrefix(subnet)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, netip.Addr{}, errdefs.Invalid(fmt.Sprintf("invalid subnet %q: want an IPv4 prefix such as 10.99.0.0/24", subnet))
	}
	if p.Bits() < 8 || p.Bits() > 30 {
		return netip.Prefix{}, netip.Addr{}, errdefs.Invalid(fmt.Sprintf("invalid subnet %q: prefix length must be 8 to 30", subnet))
	}
	if p.Masked() != p {
		return netip.Prefix{}, netip.Addr{}, errdefs.Invalid(fmt.Sprintf("invalid subnet %q: host bits set, did you mean %s?", subnet, p.Masked()))
	}
	first, last := hostRange(p)
	if gateway == "" {
		return p, first, nil
	}
	gw, err := netip.ParseAddr(gateway)
	if err != nil || !gw.Is4() {
		return netip.Prefix{}, netip.Addr{}, errdefs.Invalid(fmt.Sprintf("invalid gateway %q: want an IPv4 address", gateway))
	}
	if !p.Contains(gw) || gw.Less(first) || last.Less(gw) {
		return netip.Prefix{}, netip.Addr{}, errdefs.Invalid(fmt.Sprintf("invalid gateway %s: not a host address of subnet %s", gw, p))
	}
	return p, gw, nil
}

func hostRange(p netip.Prefix) (first, last netip.Addr) {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	size := uint32(1) << (32 - p.Bits())
	u := func(v uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return u(v + 1), u(v + size - 2)
}

// Attachment is a VM's place on a bridge network, fixed when it is created
// (its lease) and applied on the host at each start (its TAP).
type Attachment struct {
	Network string `json:"network"`
	Bridge  string `json:"bridge"`
	// Subnet, Gateway and IP: the VM's address is IP/Subnet.Bits(), its
	// default route and name server Gateway.
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
	IP      string `json:"ip"`
	TAP     string `json:"tap"`
	// Isolated keeps the TAP from talking to the bridge's other ports.
	Isolated bool `json:"isolated,omitempty"`
}

// GuestCIDR is the VM's address with the subnet's prefix length.
func (a *Attachment) GuestCIDR() string {
	p, err := netip.ParsePrefix(a.Subnet)
	if err != nil {
		return a.IP + "/32"
	}
	return fmt.Sprintf("%s/%d", a.IP, p.Bits())
}

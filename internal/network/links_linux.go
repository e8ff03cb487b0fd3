package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/errdefs"
)

// needNetAdmin explains what bridge networking needs when the daemon lacks
// it.
const needNetAdmin = "bridge networks need CAP_NET_ADMIN (run the kiln daemon as root, or give its binary the capability: setcap cap_net_admin+ep $(which kiln)); user-mode networking (--network user) needs no privileges"

// privErr turns a permission error of a netlink or nftables request into
// one that says what is missing.
func privErr(what string, err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrPermission) {
		return errdefs.Mark(fmt.Errorf("%s: %s", what, needNetAdmin), errdefs.ErrUnavailable)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// EnsureBridge makes the bridge (if missing) with gateway/prefix as its
// address, up, and lets traffic from 127.0.0.1 be routed to it (published
// ports reached on the host's loopback are DNATed to its VMs). Reverse
// path filtering is strict on it: a packet that comes in on the bridge
// from an address the host would not route back through the bridge is
// dropped (the kernel applies the larger of this and conf/all).
func EnsureBridge(name string, gateway netip.Addr, subnet netip.Prefix) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return privErr("looking up bridge "+name, err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil {
			return privErr("creating bridge "+name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("looking up bridge %s: %w", name, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gateway.AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return privErr("giving bridge "+name+" address "+addr.String(), err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return privErr("bringing up bridge "+name, err)
	}
	conf := filepath.Join("/proc/sys/net/ipv4/conf", name)
	if err := writeSysctl(filepath.Join(conf, "route_localnet"), "1"); err != nil {
		return err
	}
	return writeSysctl(filepath.Join(conf, "rp_filter"), "1")
}

// EnsureTAP makes the VM's persistent TAP (if missing), a port of the
// bridge, isolated from the other ports when asked, and up. QEMU opens it
// by name at each start; it stays while the VM exists.
func EnsureTAP(a *Attachment) error {
	br, err := netlink.LinkByName(a.Bridge)
	if err != nil {
		return privErr("looking up bridge "+a.Bridge+" of network "+a.Network, err)
	}
	link, err := netlink.LinkByName(a.TAP)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return privErr("looking up TAP "+a.TAP, err)
		}
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: a.TAP},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE | netlink.TUNTAP_VNET_HDR,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return privErr("creating TAP "+a.TAP, err)
		}
		if link, err = netlink.LinkByName(a.TAP); err != nil {
			return fmt.Errorf("looking up TAP %s: %w", a.TAP, err)
		}
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return privErr("adding TAP "+a.TAP+" to bridge "+a.Bridge, err)
	}
	if err := netlink.LinkSetIsolated(link, a.Isolated); err != nil {
		return privErr("setting isolation of TAP "+a.TAP, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return privErr("bringing up TAP "+a.TAP, err)
	}
	return nil
}

// OpenTAP opens the persistent TAP device name, in this thread's network
// namespace, for a VMM to inherit, as QEMU would open it itself: no packet
// information, with virtio-net headers.
func OpenTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun for TAP %s: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TAP name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attaching to TAP %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap-"+name), nil
}

// DeleteLink removes a link kiln made; a link that is already gone is not
// an error.
func DeleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return privErr("looking up "+name, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return privErr("removing "+name, err)
	}
	return nil
}

// Links returns the names of the host's links that start with prefix.
func Links(prefix string) ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []string
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out, nil
}

// RouteOverlap returns a route of the host that overlaps p (outside kiln's
// own bridges), as "DST dev IF", or "" when there is none. A default route
// does not count: every subnet overlaps it.
func RouteOverlap(p netip.Prefix) (string, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: syscall.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return "", fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if ones == 0 {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok {
			continue
		}
		dst := netip.PrefixFrom(a, ones)
		if !dst.Overlaps(p) {
			continue
		}
		dev := ""
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		if strings.HasPrefix(dev, BridgePrefix) {
			continue
		}
		return fmt.Sprintf("%s dev %s", dst, dev), nil
	}
	return "", nil
}

// EnableForwarding turns on IPv4 forwarding (as docker does): published
// ports reached from outside and egress traffic are routed through the
// host; kiln's firewall drops what no network allows.
func EnableForwarding() error {
	return writeSysctl("/proc/sys/net/ipv4/ip_forward", "1")
}

func writeSysctl(path, value string) error {
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return privErr("setting "+strings.TrimPrefix(path, "/proc/sys/"), err)
	}
	return nil
}

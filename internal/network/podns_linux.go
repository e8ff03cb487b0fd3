package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/errdefs"
)

// NSPrefix introduces a network namespace as a VM's network:
// "ns:/run/netns/pod1" (podman's --network ns:PATH). The namespace is
// someone else's (a container runtime's pod, set up by CNI); the VM takes
// over its interface, as Kata does: kiln makes a TAP beside it and
// redirects every frame both ways between the two with tc, and the guest
// takes the interface's MAC, address and default route. The namespace's
// own stack no longer sees the interface's traffic.
const NSPrefix = "ns:"

// PodTAP is the TAP kiln makes in a VM's network namespace.
const PodTAP = "kiln0"

// IsNS reports whether a parsed mode is a network namespace.
func IsNS(mode string) bool { return strings.HasPrefix(mode, NSPrefix) }

// NSPath is the namespace path of a mode IsNS accepts.
func NSPath(mode string) string { return strings.TrimPrefix(mode, NSPrefix) }

// PodInterface is the interface a VM takes over in a network namespace,
// as it was when the VM was made.
type PodInterface struct {
	// NS is the namespace's path.
	NS        string `json:"ns"`
	Interface string `json:"interface"`
	MAC       string `json:"mac"`
	// Address is the interface's IPv4 address and prefix ("10.1.2.3/24").
	Address string `json:"address"`
	// Gateway is the namespace's default route's gateway, if it has one.
	Gateway string `json:"gateway,omitempty"`
	MTU     int    `json:"mtu"`
}

// InspectNS finds the interface a VM takes over in the namespace at path:
// the one interface other than loopback (and kiln's own TAP) with an IPv4
// address.
func InspectNS(path string) (*PodInterface, error) {
	var p *PodInterface
	err := inNS(path, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("listing its interfaces: %w", err)
		}
		var found []string
		for _, l := range links {
			a := l.Attrs()
			if a.Name == "lo" || a.Name == PodTAP || a.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
			if err != nil {
				return fmt.Errorf("listing the addresses of %s: %w", a.Name, err)
			}
			if len(addrs) == 0 {
				continue
			}
			found = append(found, a.Name)
			ip, _ := netip.AddrFromSlice(addrs[0].IP.To4())
			ones, _ := addrs[0].Mask.Size()
			p = &PodInterface{NS: path, Interface: a.Name, MAC: a.HardwareAddr.String(),
				Address: netip.PrefixFrom(ip, ones).String(), MTU: a.MTU}
			routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
			if err != nil {
				return fmt.Errorf("listing the routes of %s: %w", a.Name, err)
			}
			for _, r := range routes {
				if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw != nil {
					p.Gateway = r.Gw.String()
				}
			}
		}
		switch {
		case len(found) == 0:
			return errors.New("it has no interface with an IPv4 address besides loopback (has the network plugin run?)")
		case len(found) > 1:
			return fmt.Errorf("it has %d interfaces with an IPv4 address (%s); kiln takes over exactly one", len(found), strings.Join(found, ", "))
		}
		return nil
	})
	if err != nil {
		return nil, errdefs.Invalid(fmt.Sprintf("network namespace %s: %v", path, err))
	}
	return p, nil
}

// ConnectNS makes the namespace's TAP (when missing), up, with the
// interface's MTU, and the redirects between it and the interface: each
// gets an ingress queueing discipline whose one filter (u32, matching
// everything) sends every frame out of the other. It is idempotent.
func ConnectNS(p *PodInterface) error {
	return inNS(p.NS, func() error {
		link, err := netlink.LinkByName(p.Interface)
		if err != nil {
			return fmt.Errorf("network namespace %s: interface %s: %w", p.NS, p.Interface, err)
		}
		tap, err := netlink.LinkByName(PodTAP)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) {
				return privErr("looking up TAP "+PodTAP+" in "+p.NS, err)
			}
			t := &netlink.Tuntap{
				LinkAttrs: netlink.LinkAttrs{Name: PodTAP, MTU: p.MTU},
				Mode:      netlink.TUNTAP_MODE_TAP,
				Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE | netlink.TUNTAP_VNET_HDR,
			}
			if err := netlink.LinkAdd(t); err != nil {
				return privErr("creating TAP "+PodTAP+" in "+p.NS, err)
			}
			if tap, err = netlink.LinkByName(PodTAP); err != nil {
				return fmt.Errorf("looking up TAP %s in %s: %w", PodTAP, p.NS, err)
			}
		}
		if err := netlink.LinkSetUp(tap); err != nil {
			return privErr("bringing up TAP "+PodTAP+" in "+p.NS, err)
		}
		for _, pair := range [][2]netlink.Link{{link, tap}, {tap, link}} {
			if err := redirect(pair[0], pair[1]); err != nil {
				return fmt.Errorf("network namespace %s: %w", p.NS, err)
			}
		}
		return nil
	})
}

// redirect sends every frame that comes in on from out of to.
func redirect(from, to netlink.Link) error {
	idx := from.Attrs().Index
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
	if err := netlink.QdiscReplace(ingress); err != nil {
		return privErr("adding an ingress queueing discipline to "+from.Attrs().Name, err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.MakeHandle(0xffff, 0),
			Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions: []netlink.Action{netlink.NewMirredAction(to.Attrs().Index)},
	}
	if err := netlink.FilterReplace(f); err != nil {
		return privErr("redirecting "+from.Attrs().Name+" to "+to.Attrs().Name, err)
	}
	return nil
}

// DisconnectNS removes what ConnectNS made: the TAP (and its queueing
// discipline) and the interface's ingress queueing discipline, so that
// the namespace's own stack sees its traffic again. A namespace or
// interface that is gone is no error.
func DisconnectNS(p *PodInterface) error {
	if _, err := os.Stat(p.NS); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return inNS(p.NS, func() error {
		if tap, err := netlink.LinkByName(PodTAP); err == nil {
			if err := netlink.LinkDel(tap); err != nil {
				return privErr("removing TAP "+PodTAP+" from "+p.NS, err)
			}
		}
		link, err := netlink.LinkByName(p.Interface)
		if err != nil {
			return nil
		}
		ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index,
			Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
		if err := netlink.QdiscDel(ingress); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return privErr("removing the ingress queueing discipline of "+p.Interface+" in "+p.NS, err)
		}
		return nil
	})
}

// OpenNSTAP opens the TAP of the namespace at path for a VMM to inherit.
func OpenNSTAP(path string) (*os.File, error) {
	var f *os.File
	err := inNS(path, func() error {
		var err error
		if f, err = OpenTAP(PodTAP); err != nil {
			return fmt.Errorf("network namespace %s: %w", path, err)
		}
		return nil
	})
	return f, err
}

// inNS runs fn on an OS thread of its own in the network namespace at
// path. The thread is never given back to the Go scheduler: it ends with
// fn, whatever namespace it is in then.
func inNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no unlock: the thread exits with this goroutine
		ns, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("network namespace %s: %w", path, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- privErr("entering network namespace "+path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/agent"
)

// nicWait bounds the wait for the network interface to appear: a virtio-net
// driver loaded as a module registers it as it probes, which may trail the
// module's load.
const nicWait = 5 * time.Second

// setupNetwork brings up loopback and, when the spec has one, the VM's
// interface with its static address and default route, and writes the
// files a program expects: /etc/hosts and /etc/hostname always,
// /etc/resolv.conf with a network. It runs after the switch to an image's
// root, so the files land in the VM's writable layer (docker bind-mounts
// its own over the image's; here the VM owns its root); a bare VM gets them
// in the initramfs.
//
// It talks rtnetlink itself rather than through a library: three requests
// (link up, address, route) in a binary that is in every guest's initramfs.
func setupNetwork(s *agent.Spec) error {
	nl, err := openNetlink()
	if err != nil {
		return err
	}
	defer nl.close()
	if err := nl.linkUp(1); err != nil { // lo is always index 1
		return fmt.Errorf("bringing up lo: %w", err)
	}
	if n := s.Network; n != nil {
		if err := nl.configure(n); err != nil {
			return err
		}
	}
	return writeNetFiles(s)
}

func (nl *netlink) configure(n *agent.Network) error {
	ifi, err := waitInterface(n.Interface)
	if err != nil {
		return err
	}
	if n.MAC != "" {
		hw, err := net.ParseMAC(n.MAC)
		if err != nil {
			return fmt.Errorf("MAC %q: %w", n.MAC, err)
		}
		if !bytes.Equal(hw, ifi.HardwareAddr) {
			if err := nl.setMAC(ifi.Index, hw); err != nil {
				return fmt.Errorf("setting the MAC of %s to %s: %w", n.Interface, hw, err)
			}
		}
	}
	pfx, err := netip.ParsePrefix(n.Address)
	if err != nil {
		return fmt.Errorf("network address %q: %w", n.Address, err)
	}
	if err := nl.addAddr(ifi.Index, pfx); err != nil {
		return fmt.Errorf("adding address %s to %s: %w", pfx, n.Interface, err)
	}
	if err := nl.linkUp(ifi.Index); err != nil {
		return fmt.Errorf("bringing up %s: %w", n.Interface, err)
	}
	if state, ok := waitLinkReady("/sys/class/net", n.Interface, nicWait); !ok {
		logf("%s has no carrier %s after it was brought up (%s); the program starts anyway", n.Interface, nicWait, state)
	}
	if n.Gateway != "" {
		gw, err := netip.ParseAddr(n.Gateway)
		if err != nil {
			return fmt.Errorf("gateway %q: %w", n.Gateway, err)
		}
		if err := nl.addDefaultRoute(ifi.Index, gw); err != nil {
			return fmt.Errorf("adding default route via %s: %w", gw, err)
		}
	}
	return nil
}

func waitInterface(name string) (*net.Interface, error) {
	deadline := time.Now().Add(nicWait)
	for {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			return ifi, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("network interface %s did not appear within %s (is virtio_net in the kernel or its modules?): %w", name, nicWait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLinkReady waits until the interface has its carrier. virtio-net
// learns the link state from the device in a work item, which under load
// can run after the interface is set up; until then the kernel holds the
// interface's queues shut and what the program sends is dropped. (Its
// operstate lags the carrier by up to a second more, the kernel's link
// watcher batching events that are not urgent: it is not waited for,
// since packets flow before it.) It reads sysfs under dir and returns the
// carrier last read, and whether it came on before timeout.
func waitLinkReady(dir, name string, timeout time.Duration) (string, bool) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(filepath.Join(dir, name, "carrier"))
		if errors.Is(err, fs.ErrNotExist) {
			return err.Error(), true // no sysfs: nothing to wait on
		}
		carrier := strings.TrimSpace(string(b))
		if carrier == "1" {
			return carrier, true
		}
		if time.Now().After(deadline) {
			if err != nil {
				return err.Error(), false
			}
			return "carrier " + carrier, false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// writeNetFiles writes /etc/hostname, /etc/hosts and, with a network,
// /etc/resolv.conf, as docker provides them.
func writeNetFiles(s *agent.Spec) error {
	if err := os.MkdirAll("/etc", 0o755); err != nil {
		return fmt.Errorf("creating /etc: %w", err)
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if s.Hostname != "" {
		ip := "127.0.1.1"
		if s.Network != nil {
			ip, _, _ = strings.Cut(s.Network.Address, "/")
		}
		hosts += ip + "\t" + s.Hostname + "\n"
	}
	for _, h := range s.Hosts {
		hosts += h + "\n"
	}
	files := []struct{ path, data string }{{"/etc/hosts", hosts}}
	if s.Hostname != "" {
		files = append(files, struct{ path, data string }{"/etc/hostname", s.Hostname + "\n"})
	}
	if s.Network != nil && len(s.Network.DNS) > 0 {
		var b strings.Builder
		for _, d := range s.Network.DNS {
			b.WriteString("nameserver " + d + "\n")
		}
		files = append(files, struct{ path, data string }{"/etc/resolv.conf", b.String()})
	}
	for _, f := range files {
		// An image may have these as symlinks (resolv.conf to a resolver's
		// runtime file): replace the link, not its target.
		_ = os.Remove(f.path)
		if err := os.WriteFile(f.path, []byte(f.data), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", f.path, err)
		}
	}
	return nil
}

// netlink is a NETLINK_ROUTE socket that sends one request at a time and
// waits for its acknowledgement.
type netlink struct {
	fd  int
	seq uint32
}

func openNetlink() (*netlink, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding netlink socket: %w", err)
	}
	return &netlink{fd: fd}, nil
}

func (nl *netlink) close() { unix.Close(nl.fd) }

var ne = binary.NativeEndian

// request sends a message of type typ with body (the fixed header of the
// message type and its attributes) and returns the kernel's verdict.
func (nl *netlink) request(typ, flags uint16, body []byte) error {
	nl.seq++
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	ne.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	ne.PutUint16(msg[4:], typ)
	ne.PutUint16(msg[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(msg[8:], nl.seq)
	msg = append(msg, body...)
	if err := unix.Sendto(nl.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sending netlink request: %w", err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(nl.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading netlink answer: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("parsing netlink answer: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != nl.seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("short netlink error message")
			}
			if code := int32(ne.Uint32(m.Data)); code != 0 {
				return syscall.Errno(-code)
			}
			return nil
		}
	}
}

// attr appends a netlink attribute (rtattr) to b.
func attr(b []byte, typ uint16, data []byte) []byte {
	l := 4 + len(data)
	h := make([]byte, 4)
	ne.PutUint16(h[0:], uint16(l))
	ne.PutUint16(h[2:], typ)
	b = append(append(b, h...), data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// linkUp sets IFF_UP on the interface (RTM_NEWLINK with an ifinfomsg).
func (nl *netlink) linkUp(index int) error {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	ne.PutUint32(b[4:], uint32(index))
	ne.PutUint32(b[8:], unix.IFF_UP)  // flags
	ne.PutUint32(b[12:], unix.IFF_UP) // change mask
	return nl.request(unix.RTM_NEWLINK, 0, b)
}

// setMAC gives a link its hardware address (RTM_NEWLINK with
// IFLA_ADDRESS), while it is down.
func (nl *netlink) setMAC(index int, hw net.HardwareAddr) error {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	ne.PutUint32(b[4:], uint32(index))
	b = attr(b, unix.IFLA_ADDRESS, hw)
	return nl.request(unix.RTM_NEWLINK, 0, b)
}

// addAddr adds an IPv4 address (RTM_NEWADDR with an ifaddrmsg); one that
// is already there is fine.
func (nl *netlink) addAddr(index int, p netip.Prefix) error {
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = unix.AF_INET
	b[1] = byte(p.Bits())
	b[3] = unix.RT_SCOPE_UNIVERSE
	ne.PutUint32(b[4:], uint32(index))
	ip := p.Addr().As4()
	b = attr(b, unix.IFA_LOCAL, ip[:])
	b = attr(b, unix.IFA_ADDRESS, ip[:])
	bcast := broadcast(p)
	b = attr(b, unix.IFA_BROADCAST, bcast[:])
	err := nl.request(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, b)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

func broadcast(p netip.Prefix) [4]byte {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], v)
	return out
}

// addDefaultRoute adds 0.0.0.0/0 via gw on the interface (RTM_NEWROUTE
// with an rtmsg) in the main table.
func (nl *netlink) addDefaultRoute(index int, gw netip.Addr) error {
	b := make([]byte, unix.SizeofRtMsg)
	b[0] = unix.AF_INET
	b[4] = unix.RT_TABLE_MAIN
	b[5] = unix.RTPROT_BOOT
	b[6] = unix.RT_SCOPE_UNIVERSE
	b[7] = unix.RTN_UNICAST
	g := gw.As4()
	b = attr(b, unix.RTA_GATEWAY, g[:])
	oif := make([]byte, 4)
	ne.PutUint32(oif, uint32(index))
	b = attr(b, unix.RTA_OIF, oif)
	err := nl.request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, b)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// Package network is kiln's host-side networking: the network modes a VM can
// have, docker-style published-port specs, and the checks and choices made
// on the host before a VM with forwards boots (a host port in use, an
// ephemeral port); bridge networks: their bridges and TAPs (netlink), kiln's
// nftables tables, and the name server on each bridge's gateway.
package network

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"strings"
)

// Network modes (a VM's Network).
const (
	// ModeUser is QEMU user-mode networking (slirp): no privileges, the
	// guest reaches out through NAT, and published ports are forwards
	// QEMU listens on. The default.
	ModeUser = "user"
	// ModeNone gives the VM no network interface (only loopback).
	ModeNone = "none"
)

// ParseMode checks a --network value: user ("" too), none, ns:PATH (a
// network namespace, podns_linux.go), or the name of a bridge network
// (made with kiln network create; whether it exists is for the daemon to
// say).
func ParseMode(s string) (string, error) {
	switch s {
	case "", ModeUser:
		return ModeUser, nil
	case ModeNone:
		return ModeNone, nil
	}
	if strings.HasPrefix(s, NSPrefix) {
		if p := strings.TrimPrefix(s, NSPrefix); !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return "", invalid(fmt.Sprintf("invalid network %q: ns: takes a network namespace's absolute, clean path (ns:/run/netns/NAME)", s))
		}
		return s, nil
	}
	if ValidateNetworkName(s) != nil {
		return "", invalid(fmt.Sprintf("invalid network %q: use user, none, ns:PATH (a network namespace) or the name of a network (kiln network ls)", s))
	}
	return s, nil
}

// IsBridge reports whether a parsed mode names a bridge network.
func IsBridge(mode string) bool {
	return mode != ModeUser && mode != ModeNone && mode != "" && !strings.HasPrefix(mode, NSPrefix)
}

// The guest side of user-mode networking: QEMU's slirp defaults, which
// hostfwd forwards to (a forward with no guest address goes to UserGuestIP).
const (
	UserInterface = "eth0"
	UserGuestIP   = "10.0.2.15"
	UserGuestCIDR = UserGuestIP + "/24"
	UserGateway   = "10.0.2.2"
	UserDNS       = "10.0.2.3"
)

// MAC returns the VM's deterministic MAC address: QEMU's locally
// administered 52:54:00 prefix and three bytes of a hash of the VM's ID, so
// it is stable across restarts of the VM.
func MAC(id string) string {
	h := sha256.Sum256([]byte(id))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
}

package vm

import (
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/vmm"
)

func TestSpecValidateBridge(t *testing.T) {
	att := &network.Attachment{Network: "backend", Bridge: network.BridgeName("backend"), Subnet: "10.99.0.0/24", Gateway: "10.99.0.1", IP: "10.99.0.7", TAP: network.TAPName("id")}
	for _, tt := range []struct {
		name string
		spec Spec
		want string // "" valid
	}{
		{"attached", Spec{VMConfig: api.VMConfig{Network: "backend", IP: "10.99.0.7"}, Attach: att}, ""},
		{"no lease", Spec{VMConfig: api.VMConfig{Network: "backend"}}, "network backend: no address leased"},
		{"ip on user", Spec{VMConfig: api.VMConfig{IP: "10.99.0.7"}}, `invalid IP "10.99.0.7": --ip needs a bridge network`},
		{"ip not v4", Spec{VMConfig: api.VMConfig{Network: "backend", IP: "fd00::1"}, Attach: att}, `invalid IP "fd00::1": want an IPv4 address`},
		{"other network", Spec{VMConfig: api.VMConfig{Network: "front"}, Attach: att}, `attached to network "backend"`},
		{"attach on none", Spec{VMConfig: api.VMConfig{Network: network.ModeNone}, Attach: att}, "has a bridge attachment"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.spec
			s.Program = "/bin/true"
			err := s.Validate(HostLimits{MemoryMiB: 1024, CPUs: 2})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Validate = %v, want an invalid-argument error with %q", err, tt.want)
			}
		})
	}
}

func TestBridgeNIC(t *testing.T) {
	att := &network.Attachment{Network: "backend", Subnet: "10.99.0.0/24", Gateway: "10.99.0.1", IP: "10.99.0.7", TAP: "kn-0123456789ab"}
	nic, guest := bridgeNIC("vmid", att)
	if nic.Mode != vmm.NetTAP || nic.TAP != "kn-0123456789ab" || nic.MAC != network.MAC("vmid") || len(nic.Forwards) != 0 {
		t.Errorf("NIC = %+v", nic)
	}
	if guest.Interface != "eth0" || guest.Address != "10.99.0.7/24" || guest.Gateway != "10.99.0.1" || len(guest.DNS) != 1 || guest.DNS[0] != "10.99.0.1" {
		t.Errorf("guest network = %+v", guest)
	}
}

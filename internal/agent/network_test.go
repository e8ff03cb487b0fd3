package agent

import (
	"strings"
	"testing"
)

func TestSpecValidateNetwork(t *testing.T) {
	good := Network{Interface: "eth0", Address: "10.0.2.15/24", Gateway: "10.0.2.2", DNS: []string{"10.0.2.3"}}
	tests := []struct {
		name string
		edit func(*Network)
		want string
	}{
		{"ok", func(*Network) {}, ""},
		{"no gateway", func(n *Network) { n.Gateway = "" }, ""},
		{"no interface", func(n *Network) { n.Interface = "" }, "no interface"},
		{"no prefix", func(n *Network) { n.Address = "10.0.2.15" }, `address "10.0.2.15"`},
		{"ipv6", func(n *Network) { n.Address = "fd00::1/64" }, "IPv4"},
		{"bad dns", func(n *Network) { n.DNS = []string{"x"} }, `"x" is not an IPv4 address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := good
			tt.edit(&n)
			s := Spec{Version: Version, Args: []string{"/p"}, Network: &n}
			err := s.Validate()
			if (err != nil) != (tt.want != "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Validate = %v, want %q", err, tt.want)
			}
		})
	}
}

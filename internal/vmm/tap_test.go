package vmm

import (
	"strings"
	"testing"
)

func TestNetConfigTAPValidate(t *testing.T) {
	for _, tt := range []struct {
		net  NetConfig
		want string // "" valid
	}{
		{NetConfig{Mode: NetTAP, MAC: "52:54:00:12:34:56", TAP: "kn-0123456789ab"}, ""},
		{NetConfig{Mode: NetTAP, MAC: "52:54:00:12:34:56"}, `TAP name ""`},
		{NetConfig{Mode: NetTAP, MAC: "52:54:00:12:34:56", TAP: "kn-0123456789abc"}, "TAP name"},
		{NetConfig{Mode: NetTAP, MAC: "52:54:00:12:34:56", TAP: "a,script=/x"}, "TAP name"},
		{NetConfig{Mode: NetTAP, MAC: "52:54:00:12:34:56", TAP: "kn-1", Forwards: []Forward{{Protocol: "tcp", HostIP: "0.0.0.0", HostPort: 1, GuestPort: 1}}}, "no forwards"},
		{NetConfig{Mode: "vde", MAC: "52:54:00:12:34:56"}, `network mode "vde"`},
	} {
		err := tt.net.validate()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("validate(%+v) = %v, want %q", tt.net, err, tt.want)
		}
	}
}

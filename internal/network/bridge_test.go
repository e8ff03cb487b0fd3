package network

import (
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

func TestInterfaceNamesFitIFNAMSIZ(t *testing.T) {
	long := strings.Repeat("n", 63)
	for _, n := range []string{BridgeName("a"), BridgeName(long), TAPName(strings.Repeat("f", 64))} {
		if len(n) != 15 {
			t.Errorf("%q is %d bytes, want 15", n, len(n))
		}
	}
	if BridgeName("a") == BridgeName("b") || TAPName("x") == TAPName("y") {
		t.Error("different names hash alike")
	}
	if TAPName("id") != TAPName("id") || !strings.HasPrefix(TAPName("id"), TAPPrefix) || !strings.HasPrefix(BridgeName("n"), BridgePrefix) {
		t.Error("names are not stable or lack their prefix")
	}
}

func TestParseSubnet(t *testing.T) {
	for _, tt := range []struct {
		subnet, gw     string
		wantP, wantGW  string
		wantErrContain string
	}{
		{"10.99.0.0/24", "", "10.99.0.0/24", "10.99.0.1", ""},
		{"10.99.0.0/24", "10.99.0.254", "10.99.0.0/24", "10.99.0.254", ""},
		{"10.99.0.0/29", "", "10.99.0.0/29", "10.99.0.1", ""},
		{"10.99.0.5/24", "", "", "", `invalid subnet "10.99.0.5/24": host bits set, did you mean 10.99.0.0/24?`},
		{"10.99.0.0/31", "", "", "", `invalid subnet "10.99.0.0/31": prefix length must be 8 to 30`},
		{"fd00::/64", "", "", "", `invalid subnet "fd00::/64": want an IPv4 prefix`},
		{"banana", "", "", "", `invalid subnet "banana"`},
		{"10.99.0.0/24", "10.98.0.1", "", "", "invalid gateway 10.98.0.1: not a host address of subnet 10.99.0.0/24"},
		{"10.99.0.0/24", "10.99.0.255", "", "", "invalid gateway 10.99.0.255"},
		{"10.99.0.0/24", "x", "", "", `invalid gateway "x"`},
	} {
		p, gw, err := ParseSubnet(tt.subnet, tt.gw)
		if tt.wantErrContain != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErrContain) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("ParseSubnet(%q, %q) = %v, want an invalid-argument error with %q", tt.subnet, tt.gw, err, tt.wantErrContain)
			}
			continue
		}
		if err != nil || p.String() != tt.wantP || gw.String() != tt.wantGW {
			t.Errorf("ParseSubnet(%q, %q) = %v, %v, %v", tt.subnet, tt.gw, p, gw, err)
		}
	}
}

func TestValidateNetworkName(t *testing.T) {
	for name, ok := range map[string]bool{"backend": true, "a.b-c_1": true, "user": false, "none": false, "": false, "-x": false, strings.Repeat("a", 64): false} {
		if err := ValidateNetworkName(name); (err == nil) != ok {
			t.Errorf("ValidateNetworkName(%q) = %v", name, err)
		}
	}
}

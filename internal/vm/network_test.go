package vm

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/vmm"
)

func TestValidateNetwork(t *testing.T) {
	h := HostLimits{MemoryMiB: 4096, CPUs: 4}
	tests := []struct {
		name    string
		network string
		ports   []network.PortMapping
		want    string // mode after Validate, or the error
	}{
		{"default is user", "", nil, "user"},
		{"user with ports", "user", []network.PortMapping{{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}}, "user"},
		{"none", "none", nil, "none"},
		{"none with ports", "none", []network.PortMapping{{GuestPort: 80, Protocol: "tcp"}}, "cannot publish port 80/tcp"},
		{"bad mode", "bridge", nil, `invalid network "bridge"`},
		{"bad port", "", []network.PortMapping{{GuestPort: 80, Protocol: "sctp"}}, `protocol "sctp"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Spec{VMConfig: api.VMConfig{Program: "/bin/true", Network: tt.network, Ports: tt.ports}}
			s.Resolve()
			err := s.Validate(h)
			if err != nil {
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("Validate: %v, want %q", err, tt.want)
				}
				return
			}
			if s.Network != tt.want {
				t.Errorf("Validate: network %q, want %q", s.Network, tt.want)
			}
		})
	}
}

func TestResolvePortsAtEachStart(t *testing.T) {
	dir := t.TempDir()
	vm := &VM{
		Name: "web", Dir: dir,
		Spec: Spec{VMConfig: api.VMConfig{Ports: []network.PortMapping{{HostIP: "127.0.0.1", GuestPort: 80, Protocol: "tcp"}}}},
		cfg:  vmm.Config{Net: &vmm.NetConfig{Mode: vmm.NetUser, MAC: "52:54:00:00:00:01"}},
	}
	cfg, err := vm.resolvePorts()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Net.Forwards) != 1 || cfg.Net.Forwards[0].HostPort == 0 || vm.cfg.Net.Forwards != nil {
		t.Fatalf("resolvePorts: forwards %+v (the VM's own config %+v must stay unresolved)", cfg.Net.Forwards, vm.cfg.Net.Forwards)
	}
	got := vm.Ports()
	if len(got) != 1 || got[0].HostPort != cfg.Net.Forwards[0].HostPort || got[0].HostIP != "127.0.0.1" {
		t.Errorf("Ports() = %+v, want the resolved forward", got)
	}
	// A fixed port taken since is reported before boot.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	vm.Spec.Ports[0].HostPort = port
	_, err = vm.resolvePorts()
	if err == nil || !strings.Contains(err.Error(), "port "+strconv.Itoa(port)+" is already in use on 127.0.0.1") {
		t.Errorf("resolvePorts with a taken port: %v", err)
	}
	// No network: no forwards, an empty record.
	vm.cfg.Net = nil
	if cfg, err := vm.resolvePorts(); err != nil || cfg.Net != nil || vm.Ports() != nil {
		t.Errorf("resolvePorts without a network: %+v, %v, ports %v", cfg.Net, err, vm.Ports())
	}
}

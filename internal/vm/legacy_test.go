package vm

import (
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/network"
)

// testdata/vm-v1.json is a vm.json as kiln wrote it while its Spec copied
// the request's fields (rlimits, nanosecond durations), every field set.
// It still loads, every field where the request and the resolved part
// keep it now.
func TestLegacyVMRecordLoads(t *testing.T) {
	b, err := os.ReadFile("testdata/vm-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	var rec vmRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("reading an older vm.json: %v", err)
	}
	want := Spec{
		VMConfig: api.VMConfig{
			Name: "old", Image: "app:v1", Mode: "full", Pull: "never", Insecure: true, DiskMiB: 2048,
			Entrypoint: []string{"/bin/app"}, Cmd: []string{"-v"}, Env: []string{"A=1"},
			WorkingDir: "/srv", User: "1000:1000", MemoryMiB: 256, CPUs: 2, Kernel: "default", Accel: "tcg",
			Ulimits:     []api.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}},
			BootTimeout: api.Duration(45 * time.Second),
			ExtraHosts:  []string{"db:10.0.0.2"}, Unconfined: true, Network: "br0", IP: "10.88.0.9",
			Ports: []api.PortMapping{{HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80, Protocol: "tcp"}},
			Mounts: []api.Mount{{Type: "volume", Source: "data", Target: "/data", ReadOnly: true},
				{Type: "volume", Target: "/anon", Anonymous: true}},
			Healthcheck: &api.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: api.Duration(2 * time.Second),
				Timeout: api.Duration(3 * time.Second), StartPeriod: api.Duration(4 * time.Second), Retries: 5},
		},
		ImageID: "sha256:abcd", ExposedPorts: []string{"80/tcp"}, StopSignal: 15,
		Attach: &network.Attachment{Network: "br0", Bridge: "kiln-br0", Subnet: "10.88.0.0/24", Gateway: "10.88.0.1",
			IP: "10.88.0.9", TAP: "kt0", Isolated: true},
	}
	if !reflect.DeepEqual(rec.Spec, want) {
		t.Errorf("older vm.json's spec =\n %+v\nwant\n %+v", rec.Spec, want)
	}
	if rec.ID != "0123456789abcdef" || rec.Config.Dir != "/var/lib/kiln/vms/0123456789abcdef" || rec.Kernel.Path != "/k/vmlinux" {
		t.Errorf("older vm.json's record: %+v", rec)
	}

	// Written again, it is in the current form, and reads back the same.
	again, err := json.Marshal(rec.Spec)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(again, &fields); err != nil {
		t.Fatal(err)
	}
	if isLegacySpec(fields) {
		t.Errorf("spec written now reads as legacy: %s", again)
	}
	var back Spec
	if err := json.Unmarshal(again, &back); err != nil || !reflect.DeepEqual(back, want) {
		t.Errorf("spec written now reads back as %+v, %v; want %+v", back, err, want)
	}
}

// The fields that tell a legacy spec: any one is enough, and a spec in the
// current form has none.
func TestIsLegacySpec(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{`{"name":"a"}`, false},
		{`{"bootTimeout":"30s","ulimits":[],"healthcheck":{"interval":"1s"}}`, false},
		{`{"healthcheck":null}`, false},
		{`{"rlimits":[]}`, true},
		{`{"bootTimeout":30000000000}`, true},
		{`{"healthcheck":{"test":["NONE"],"startPeriod":5}}`, true},
	} {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal([]byte(tt.in), &fields); err != nil {
			t.Fatal(err)
		}
		if got := isLegacySpec(fields); got != tt.want {
			t.Errorf("isLegacySpec(%s) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

package vm

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/testenv"
	"kiln.dev/kiln/internal/vmm"
)

func TestParseUser(t *testing.T) {
	tests := []struct {
		in       string
		uid, gid uint32
		checkGID bool
		wantErr  string
	}{
		{in: "", uid: 0, gid: 0, checkGID: true},
		// A bare uid: the group is not pinned here (docker would give
		// gid 0 when the image has no passwd entry; kiln takes the uid).
		{in: "1000", uid: 1000},
		{in: "1000:50", uid: 1000, gid: 50, checkGID: true},
		{in: "0:0", uid: 0, gid: 0, checkGID: true},
		{in: "4294967295:1", uid: math.MaxUint32, gid: 1, checkGID: true},
		{in: "bob", wantErr: `"bob"`},
		{in: "bob:staff", wantErr: `"bob:staff"`},
		{in: "1:x", wantErr: `"1:x"`},
		{in: "1:", wantErr: `"1:"`},
		{in: ":1", wantErr: `":1"`},
		{in: "-1", wantErr: `"-1"`},
		{in: "4294967296", wantErr: `"4294967296"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			uid, gid, err := ParseUser(tt.in)
			if tt.wantErr != "" {
				testenv.CheckInvalid(t, err, tt.wantErr)
				return
			}
			if err != nil || uid != tt.uid || (tt.checkGID && gid != tt.gid) {
				t.Fatalf("ParseUser(%q) = %d, %d, %v; want %d, %d", tt.in, uid, gid, err, tt.uid, tt.gid)
			}
		})
	}
}

func TestSpecValidate(t *testing.T) {
	host := HostLimits{MemoryMiB: 4096, CPUs: 2}
	t.Run("defaults", func(t *testing.T) {
		s := Spec{VMConfig: api.VMConfig{Program: "/bin/hello", Mounts: []options.Mount{{Type: options.MountBind, Source: "/srv/", Target: "/data/"}}}}
		before := fmt.Sprintf("%+v", s)
		if err := s.Validate(host); err != nil {
			t.Fatal(err)
		}
		if after := fmt.Sprintf("%+v", s); after != before {
			t.Errorf("Validate changed the spec:\n%s\nwas\n%s", after, before)
		}
		s.Resolve()
		if err := s.Validate(host); err != nil {
			t.Fatal(err)
		}
		if m := s.Mounts[0]; m.Source != "/srv" || m.Target != "/data" {
			t.Errorf("mount paths not cleaned: %+v", m)
		}
		if s.MemoryMiB != 256 || s.CPUs != 1 || time.Duration(s.BootTimeout) != options.DefaultBootTimeout || s.Accel != string(vmm.AccelAuto) {
			t.Errorf("defaults not filled: %+v", s)
		}
	})
	t.Run("explicit values kept", func(t *testing.T) {
		s := Spec{VMConfig: api.VMConfig{Name: "web-1.a_b", Program: "/bin/hello", MemoryMiB: 4096, CPUs: 2, Accel: string(vmm.AccelTCG),
			BootTimeout: api.Duration(5 * time.Second), WorkingDir: "/srv", User: "1000:1000", Env: []string{"A=1", "B="},
			Ulimits: []api.Ulimit{{Name: "nofile", Soft: 10, Hard: 10}}}}
		s.Resolve()
		if err := s.Validate(host); err != nil {
			t.Fatal(err)
		}
		if s.MemoryMiB != 4096 || s.CPUs != 2 || s.Accel != string(vmm.AccelTCG) || time.Duration(s.BootTimeout) != 5*time.Second {
			t.Errorf("explicit values changed: %+v", s)
		}
	})
	t.Run("minimum memory", func(t *testing.T) {
		s := Spec{VMConfig: api.VMConfig{Program: "/p", MemoryMiB: options.MinMemoryMiB}}
		if err := s.Validate(host); err != nil {
			t.Error(err)
		}
	})
	tests := []struct {
		name    string
		spec    Spec
		wantErr []string
	}{
		{"no program", Spec{}, []string{"no program"}},
		{"memory below minimum", Spec{VMConfig: api.VMConfig{Program: "/p", MemoryMiB: 32}}, []string{"32m", "64m"}},
		{"memory negative", Spec{VMConfig: api.VMConfig{Program: "/p", MemoryMiB: -1}}, []string{"memory"}},
		{"memory above host", Spec{VMConfig: api.VMConfig{Program: "/p", MemoryMiB: 8192}}, []string{"8g", "4096"}},
		{"cpus above host", Spec{VMConfig: api.VMConfig{Program: "/p", CPUs: 3}}, []string{"cpus 3", "2"}},
		{"cpus negative", Spec{VMConfig: api.VMConfig{Program: "/p", CPUs: -1}}, []string{"cpus -1"}},
		{"relative workdir", Spec{VMConfig: api.VMConfig{Program: "/p", WorkingDir: "srv/app"}}, []string{`"srv/app"`}},
		{"bad name", Spec{VMConfig: api.VMConfig{Program: "/p", Name: "my vm"}}, []string{`"my vm"`}},
		{"name starting with dash", Spec{VMConfig: api.VMConfig{Program: "/p", Name: "-x"}}, []string{`"-x"`}},
		{"env without =", Spec{VMConfig: api.VMConfig{Program: "/p", Env: []string{"A=1", "NOVALUE"}}}, []string{`"NOVALUE"`}},
		{"env with empty key", Spec{VMConfig: api.VMConfig{Program: "/p", Env: []string{"=v"}}}, []string{`"=v"`}},
		{"bad user", Spec{VMConfig: api.VMConfig{Program: "/p", User: "bob"}}, []string{`"bob"`}},
		{"bad accel", Spec{VMConfig: api.VMConfig{Program: "/p", Accel: "hvf"}}, []string{`"hvf"`}},
		{"negative boot timeout", Spec{VMConfig: api.VMConfig{Program: "/p", BootTimeout: api.Duration(-time.Second)}}, []string{"boot timeout"}},
		{"unknown rlimit", Spec{VMConfig: api.VMConfig{Program: "/p", Ulimits: []api.Ulimit{{Name: "files", Soft: 1, Hard: 1}}}}, []string{`"files"`}},
		{"rlimit soft above hard", Spec{VMConfig: api.VMConfig{Program: "/p", Ulimits: []api.Ulimit{{Name: "nofile", Soft: 2, Hard: 1}}}}, []string{"nofile"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.spec
			testenv.CheckInvalid(t, s.Validate(host), tt.wantErr...)
		})
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "web", "Web-1", "a.b_c-d", "0", strings.Repeat("x", 63)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", ".a", "_a", "a b", "a/b", "../a", "a:b", strings.Repeat("x", 64)} {
		testenv.CheckInvalid(t, ValidateName(bad), fmt.Sprintf("%q", bad))
	}
}

package jail

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSpecValidate(t *testing.T) {
	ok := Spec{Root: "/r", UID: 1000, GID: 1000, Argv: []string{"/bin/qemu"}, Binds: []Bind{{Src: "/a", Dst: "/vm/a"}}}
	tests := []struct {
		name string
		mod  func(s *Spec)
		want string // "" means valid
	}{
		{"valid", func(s *Spec) {}, ""},
		{"root uid", func(s *Spec) { s.UID = 0 }, "never runs as root"},
		{"root gid", func(s *Spec) { s.GID = 0 }, "never runs as root"},
		{"relative root", func(s *Spec) { s.Root = "r" }, `root "r"`},
		{"no program", func(s *Spec) { s.Argv = nil }, "program"},
		{"relative program", func(s *Spec) { s.Argv = []string{"qemu"} }, "program"},
		{"relative bind source", func(s *Spec) { s.Binds = []Bind{{Src: "a", Dst: "/a"}} }, "absolute"},
		{"bind on the root", func(s *Spec) { s.Binds = []Bind{{Src: "/a", Dst: "/"}} }, "below /"},
		{"unclean bind target", func(s *Spec) { s.Binds = []Bind{{Src: "/a", Dst: "/vm/../etc"}} }, "clean path"},
		{"bind target twice", func(s *Spec) { s.Binds = []Bind{{Src: "/a", Dst: "/x"}, {Src: "/b", Dst: "/x"}} }, "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			tt.mod(&s)
			err := s.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestCommandRunsTheHelperInNewNamespaces(t *testing.T) {
	s := Spec{Root: "/r", UID: 5, GID: 6, Argv: []string{"/q", "-name", "x"}}
	cmd, err := Command("/usr/bin/kiln", s)
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Args[0] != "/usr/bin/kiln" || cmd.Args[1] != ExecArg || len(cmd.Args) != 3 {
		t.Errorf("args = %q", cmd.Args)
	}
	a := cmd.SysProcAttr
	const want = 0x00020000 | 0x20000000 | 0x08000000 | 0x04000000 // NEWNS NEWPID NEWIPC NEWUTS
	if !a.Setsid || a.Cloneflags != want {
		t.Errorf("Setsid %v, Cloneflags %#x, want %#x", a.Setsid, a.Cloneflags, want)
	}
	if len(cmd.Env) != 0 {
		t.Errorf("the helper inherits an environment: %q", cmd.Env)
	}
	if _, err := Command("/k", Spec{Root: "/r", Argv: []string{"/q"}}); err == nil {
		t.Error("Command with uid 0: want an error")
	}
}

func TestParseStatus(t *testing.T) {
	text := "Name:\tqemu\nUid:\t1879048200\t1879048200\t1879048200\t1879048200\nGid:\t1879048200\t1879048200\t1879048200\t1879048200\n" +
		"CapEff:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n"
	s, err := ParseStatus(text)
	if err != nil {
		t.Fatal(err)
	}
	if s.UID != 1879048200 || s.GID != 1879048200 || s.CapEff != "0000000000000000" || !s.NoNewPrivs || s.Seccomp != "filter" {
		t.Errorf("ParseStatus = %+v", s)
	}
	s, err = ParseStatus("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\nNoNewPrivs:\t0\nSeccomp:\t0\n")
	if err != nil || s.UID != 0 || s.NoNewPrivs || s.Seccomp != "disabled" {
		t.Errorf("ParseStatus of an unconfined process = %+v, %v", s, err)
	}
	if _, err := ParseStatus("Name:\tx\n"); err == nil {
		t.Error("ParseStatus without ids: want an error")
	}
}

func TestRanges(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // "" means valid
	}{
		{"1879048192-1879113727", ""},
		{"100000-100009", ""},
		{"0-10", "1000 <= MIN"},
		{"5000-4000", "1000 <= MIN"},
		{"5000-5000", "MIN < MAX"},
		{"5000", "MIN-MAX"},
		{"a-b", "MIN-MAX"},
		{"1000-4294967295", "< 4294967295"},
	} {
		_, err := ParseRange(tt.in)
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("ParseRange(%q) = %v, want %q", tt.in, err, tt.want)
		}
	}
	closed, open := Range{100000, 100009}.Split()
	if closed != (Range{100000, 100004}) || open != (Range{100005, 100009}) {
		t.Errorf("Split = %v, %v", closed, open)
	}
	passwd := "root:x:0:0:root:/root:/bin/bash\nalice:x:100005:100005::/home/alice:/bin/sh\n"
	group := "root:x:0:\nbuilders:x:200001:\n"
	r := Range{100000, 100009}
	if err := CheckRange(r, strings.NewReader(passwd), strings.NewReader(group)); err == nil || !strings.Contains(err.Error(), "user alice (id 100005)") {
		t.Errorf("CheckRange over a range holding a user = %v", err)
	}
	r = Range{200000, 200009}
	if err := CheckRange(r, strings.NewReader(passwd), strings.NewReader(group)); err == nil || !strings.Contains(err.Error(), "group builders") {
		t.Errorf("CheckRange over a range holding a group = %v", err)
	}
	if err := CheckRange(Range{300000, 300009}, strings.NewReader(passwd), strings.NewReader(group)); err != nil {
		t.Errorf("CheckRange over a free range = %v", err)
	}
}

func TestClaimUID(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "locks")
	r := Range{Min: 50000, Max: 50002}
	var locks []*os.File
	seen := map[int]bool{}
	for range 3 {
		uid, f, err := ClaimUID(dir, r, 1)
		if err != nil {
			t.Fatal(err)
		}
		if seen[uid] || uid < r.Min || uid > r.Max {
			t.Fatalf("ClaimUID gave %d again or out of %s (have %v)", uid, r, seen)
		}
		if !UIDInUse(dir, uid) {
			t.Errorf("uid %d claimed but not in use", uid)
		}
		seen[uid] = true
		locks = append(locks, f)
	}
	if _, _, err := ClaimUID(dir, r, 0); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("ClaimUID of a full range = %v, want ErrNoUID", err)
	}
	// The lock goes with the last descriptor of it: the uid is free again.
	locks[1].Close()
	uid, f, err := ClaimUID(dir, r, 0)
	if err != nil {
		t.Fatalf("ClaimUID after a release: %v", err)
	}
	f.Close()
	if !seen[uid] {
		t.Errorf("reclaimed uid %d was never claimed", uid)
	}
	for _, l := range locks {
		l.Close()
	}
}

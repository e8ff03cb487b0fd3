package runtime

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/image"
)

func TestImageArgs(t *testing.T) {
	img := image.Config{Entrypoint: []string{"/entry", "-x"}, Cmd: []string{"serve", "--port", "80"}}
	noEntry := image.Config{Cmd: []string{"/bin/sh"}}
	tests := []struct {
		name string
		cfg  image.Config
		spec Spec
		want []string
	}{
		{"image entrypoint and cmd", img, Spec{}, []string{"/entry", "-x", "serve", "--port", "80"}},
		{"args replace cmd", img, Spec{Cmd: []string{"check"}}, []string{"/entry", "-x", "check"}},
		{"entrypoint override drops cmd", img, Spec{Entrypoint: []string{"/other"}}, []string{"/other"}},
		{"entrypoint override with args", img, Spec{Entrypoint: []string{"/other"}, Cmd: []string{"a"}}, []string{"/other", "a"}},
		{"cmd only", noEntry, Spec{}, []string{"/bin/sh"}},
		{"cmd only, args given", noEntry, Spec{Cmd: []string{"ls", "-l"}}, []string{"ls", "-l"}},
		{"nothing", image.Config{}, Spec{}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := imageArgs(tt.cfg, &tt.spec); !slices.Equal(got, tt.want) {
				t.Errorf("imageArgs = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want int // 0: an error
	}{
		{"SIGTERM", 15}, {"TERM", 15}, {"sigquit", 3}, {"15", 15}, {"SIGKILL", 9},
		{"SIGRTMIN", 34}, {"SIGRTMIN+3", 37}, {"SIGUSR1", 10}, {"9", 9},
		{"", 0}, {"0", 0}, {"65", 0}, {"SIGNOPE", 0}, {"SIGRTMIN+31", 0}, {"SIGRTMIN+x", 0},
	}
	for _, tt := range tests {
		got, err := ParseSignal(tt.in)
		if tt.want == 0 {
			if err == nil {
				t.Errorf("ParseSignal(%q) = %d, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseSignal(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestValidateImageSpec(t *testing.T) {
	base := func() Spec { return Spec{Image: "app:1"} }
	h := HostLimits{MemoryMiB: 4096, CPUs: 2}
	s := base()
	if err := s.Validate(h); err != nil {
		t.Fatal(err)
	}
	if s.Pull != PullMissing || s.DiskMiB != DefaultDiskMiB || s.Mode != "" {
		t.Errorf("defaults: pull %q disk %d mode %q", s.Pull, s.DiskMiB, s.Mode)
	}
	for _, u := range []string{"app", "app:grp", "1000", "1000:1001", "www-data", "app:1001", "_svc$"} {
		s := base()
		s.User = u
		if err := s.Validate(h); err != nil {
			t.Errorf("user %q: %v", u, err)
		}
	}
	tests := []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"program and image", func(s *Spec) { s.Program = "/bin/x" }, "not both"},
		{"neither", func(s *Spec) { s.Image = "" }, "no program or image"},
		{"bad reference", func(s *Spec) { s.Image = "UP:per:case" }, `invalid image reference "UP:per:case"`},
		{"bad mode", func(s *Spec) { s.Mode = "half" }, `invalid mode "half"`},
		{"bad pull", func(s *Spec) { s.Pull = "sometimes" }, `invalid pull policy "sometimes"`},
		{"small disk", func(s *Spec) { s.DiskMiB = 8 }, "invalid disk size 8m"},
		{"empty group", func(s *Spec) { s.User = "app:" }, `invalid user "app:"`},
		{"empty user", func(s *Spec) { s.User = ":grp" }, `invalid user ":grp"`},
		{"user with slash", func(s *Spec) { s.User = "a/b" }, `invalid user "a/b"`},
		{"mode for a program", func(s *Spec) { s.Image, s.Program, s.Mode = "", "/bin/x", ModeBinary }, "images only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base()
			tt.edit(&s)
			checkInvalid(t, s.Validate(h), tt.want)
		})
	}
	// IDs and ID prefixes are image references too.
	for _, ref := range []string{"sha256:" + strings.Repeat("ab", 32), strings.Repeat("ab", 32), "abc123", "host:5000/team/app@sha256:" + strings.Repeat("0", 64)} {
		if err := ValidateImageRef(ref); err != nil {
			t.Errorf("ValidateImageRef(%q): %v", ref, err)
		}
	}
}

func TestCheckStaticELF(t *testing.T) {
	for _, c := range []struct {
		path, want string
	}{
		{"/bin/busybox", ""},
		{"/bin/sh", "dynamically linked"},
		{"/etc/passwd", "not an ELF"},
	} {
		b, err := os.ReadFile(c.path)
		if err != nil {
			t.Logf("skipping %s: %v", c.path, err)
			continue
		}
		err = checkStaticELF(b, "img", c.path)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.path, err, c.want)
		}
	}
}

// testSquashfs builds a squashfs image from tar entries with tar2sqfs.
func testSquashfs(t *testing.T, hdrs ...tar.Header) string {
	t.Helper()
	bin, err := exec.LookPath("tar2sqfs")
	if err != nil {
		t.Skip("tar2sqfs not found: run scripts/setup (apt-get install squashfs-tools-ng)")
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		body := ""
		if h.Typeflag == tar.TypeReg {
			body = "content of " + h.Name
			h.Size = int64(len(body))
		}
		if h.Mode == 0 {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	out := filepath.Join(t.TempDir(), "img.sqfs")
	cmd := exec.Command(bin, "--quiet", "--force", "--defaults", "mode=0755", out)
	cmd.Stdin = &buf
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar2sqfs: %v: %s", err, b)
	}
	return out
}

func TestSquashfsResolveFollowsLinksInsideTheImage(t *testing.T) {
	sq := testSquashfs(t,
		tar.Header{Typeflag: tar.TypeDir, Name: "usr/"},
		tar.Header{Typeflag: tar.TypeDir, Name: "usr/bin/"},
		tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/app", Mode: 0o750},
		tar.Header{Typeflag: tar.TypeSymlink, Name: "bin", Linkname: "usr/bin"},
		tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/rel", Linkname: "app"},
		tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/abs", Linkname: "/bin/rel"},
		tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/up", Linkname: "../../../../usr/bin/app"},
		tar.Header{Typeflag: tar.TypeSymlink, Name: "loop", Linkname: "loop"},
	)
	bin, err := disk.FindTool("rdsquashfs", "squashfs-tools-ng")
	if err != nil {
		t.Skip(err)
	}
	q := &squashfs{ctx: context.Background(), bin: bin, path: sq}
	for _, p := range []string{"/usr/bin/app", "/bin/app", "/bin/rel", "/usr/bin/abs", "/bin/abs", "/usr/bin/up", "/bin/../bin/app"} {
		real, st, err := q.resolve(p)
		if err != nil || real != "/usr/bin/app" || st.typ != "file" || st.perm != 0o750 {
			t.Errorf("resolve(%s) = %s, %+v, %v; want /usr/bin/app, a 0750 file", p, real, st, err)
		}
	}
	if b, err := q.cat("/usr/bin/app"); err != nil || string(b) != "content of usr/bin/app" {
		t.Errorf("cat = %q, %v", b, err)
	}
	for _, p := range []string{"/loop", "/nope", "/bin/nope"} {
		if real, _, err := q.resolve(p); err == nil {
			t.Errorf("resolve(%s) = %s, want an error", p, real)
		}
	}
}

func TestImageUsers(t *testing.T) {
	root := t.TempDir()
	r, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	const idA, idB = "sha256:aaaa", "sha256:bbbb"
	vms := map[string]string{
		"1111111111111111": `{"spec":{"name":"web","image":"app","imageID":"sha256:aaaa"}}`,
		"2222222222222222": `{"spec":{"name":"db","imageID":"sha256:bbbb"}}`,
		"3333333333333333": `{"spec":{"name":"api","image":"app:2","imageID":"sha256:aaaa"}}`,
		"4444444444444444": `{"spec":{"name":"bare","program":"/bin/x"}}`,
		"5555555555555555": ``, // being created: no vm.json yet
		"6666666666666666": `{not json`,
	}
	for id, rec := range vms {
		dir := r.VMDir(id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if rec != "" {
			if err := os.WriteFile(filepath.Join(dir, specFile), []byte(rec), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	for id, want := range map[string][]string{idA: {"api", "web"}, idB: {"db"}, "sha256:cccc": nil} {
		got, err := r.ImageUsers(id)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ImageUsers(%s) = %q, %v; want %q", id, got, err, want)
		}
	}
}

package vm

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/image"
	"kiln.dev/kiln/internal/kernel"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/testenv"
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
		{"args replace cmd", img, Spec{VMConfig: api.VMConfig{Cmd: []string{"check"}}}, []string{"/entry", "-x", "check"}},
		{"entrypoint override drops cmd", img, Spec{VMConfig: api.VMConfig{Entrypoint: []string{"/other"}}}, []string{"/other"}},
		{"entrypoint override with args", img, Spec{VMConfig: api.VMConfig{Entrypoint: []string{"/other"}, Cmd: []string{"a"}}}, []string{"/other", "a"}},
		{"cmd only", noEntry, Spec{}, []string{"/bin/sh"}},
		{"cmd only, args given", noEntry, Spec{VMConfig: api.VMConfig{Cmd: []string{"ls", "-l"}}}, []string{"ls", "-l"}},
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

func TestValidateImageSpec(t *testing.T) {
	base := func() Spec { return Spec{VMConfig: api.VMConfig{Image: "app:1"}} }
	h := HostLimits{MemoryMiB: 4096, CPUs: 2}
	s := base()
	s.Resolve()
	if err := s.Validate(h); err != nil {
		t.Fatal(err)
	}
	if s.Pull != options.PullMissing || s.DiskMiB != options.DefaultDiskMiB || s.Mode != "" {
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
		{"program and image", func(s *Spec) { s.Program = "/bin/x" }, "not several"},
		{"image and root directory", func(s *Spec) { s.RootDir = "/srv/root" }, "not several"},
		{"none", func(s *Spec) { s.Image = "" }, "no program, image or root directory"},
		{"relative root directory", func(s *Spec) { s.Image, s.RootDir = "", "srv/root" }, `invalid root directory "srv/root"`},
		{"root directory without a command", func(s *Spec) { s.Image, s.RootDir, s.Cmd, s.Entrypoint = "", "/srv/root", nil, nil }, "no command to run in it"},
		{"mode for a root directory", func(s *Spec) { s.Image, s.RootDir, s.Cmd, s.Mode = "", "/srv/root", []string{"/x"}, options.ModeBinary }, "images only"},
		{"bad reference", func(s *Spec) { s.Image = "UP:per:case" }, `invalid image reference "UP:per:case"`},
		{"bad mode", func(s *Spec) { s.Mode = "half" }, `invalid mode "half"`},
		{"bad pull", func(s *Spec) { s.Pull = "sometimes" }, `invalid pull policy "sometimes"`},
		{"small disk", func(s *Spec) { s.DiskMiB = 8 }, "invalid disk size 8m"},
		{"empty group", func(s *Spec) { s.User = "app:" }, `invalid user "app:"`},
		{"empty user", func(s *Spec) { s.User = ":grp" }, `invalid user ":grp"`},
		{"user with slash", func(s *Spec) { s.User = "a/b" }, `invalid user "a/b"`},
		{"mode for a program", func(s *Spec) { s.Image, s.Program, s.Mode = "", "/bin/x", options.ModeBinary }, "images only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base()
			tt.edit(&s)
			testenv.CheckInvalid(t, s.Validate(h), tt.want)
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
		err = checkStaticELF(bytes.NewReader(b), "img", c.path)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.path, err, c.want)
		}
	}
}

// testSquashfs builds a squashfs image from tar entries with tar2sqfs.
func testSquashfs(t *testing.T, hdrs ...tar.Header) string {
	t.Helper()
	return testSquashfsBodies(t, nil, hdrs...)
}

// testSquashfsBodies is testSquashfs with the content of some files given
// by name; the others hold "content of <name>".
func testSquashfsBodies(t *testing.T, bodies map[string][]byte, hdrs ...tar.Header) string {
	t.Helper()
	bin, err := exec.LookPath("tar2sqfs")
	if err != nil {
		t.Skip("tar2sqfs not found: run scripts/setup (apt-get install squashfs-tools-ng)")
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		var body []byte
		if h.Typeflag == tar.TypeReg {
			body = []byte("content of " + h.Name)
			if b, ok := bodies[h.Name]; ok {
				body = b
			}
			h.Size = int64(len(body))
		}
		if h.Mode == 0 {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
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
	dst := filepath.Join(t.TempDir(), "app")
	if err := q.extract("/usr/bin/app", dst, 1<<20); err != nil {
		t.Errorf("extract: %v", err)
	} else if b, _ := os.ReadFile(dst); string(b) != "content of usr/bin/app" {
		t.Errorf("extracted %q", b)
	}
	for _, p := range []string{"/loop", "/nope", "/bin/nope"} {
		if real, _, err := q.resolve(p); err == nil {
			t.Errorf("resolve(%s) = %s, want an error", p, real)
		}
	}
}

func TestCheckStaticELFReadsOnlyHeaders(t *testing.T) {
	if err := checkStaticELF(bytes.NewReader(testenv.TinyELF(t, 4096, false)), "img", "/app"); err != nil {
		t.Errorf("static: %v", err)
	}
	if err := checkStaticELF(bytes.NewReader(testenv.TinyELF(t, 4096, true)), "img", "/app"); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("dynamic: %v", err)
	}
	arm := testenv.TinyELF(t, 4096, false)
	arm[18] = byte(elf.EM_AARCH64)
	if err := checkStaticELF(bytes.NewReader(arm), "img", "/app"); err == nil || !strings.Contains(err.Error(), "EM_AARCH64") {
		t.Errorf("arm64: %v", err)
	}
	cut := testenv.TinyELF(t, 4096, true)[:70] // the program headers are missing
	if err := checkStaticELF(bytes.NewReader(cut), "img", "/app"); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("truncated: %v", err)
	}
}

// binaryImage builds the root filesystem of an image whose program is
// /usr/local/bin/app, holding prog.
func binaryImage(t *testing.T, prog []byte) (*imagePlan, *Spec) {
	t.Helper()
	sq := testSquashfsBodies(t, map[string][]byte{"usr/local/bin/app": prog, "etc/passwd": []byte("root:x:0:0::/root:/bin/sh\n")},
		tar.Header{Typeflag: tar.TypeDir, Name: "usr/"},
		tar.Header{Typeflag: tar.TypeDir, Name: "usr/local/"},
		tar.Header{Typeflag: tar.TypeDir, Name: "usr/local/bin/"},
		tar.Header{Typeflag: tar.TypeReg, Name: "usr/local/bin/app", Mode: 0o755},
		tar.Header{Typeflag: tar.TypeDir, Name: "etc/"},
		tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644},
	)
	if _, err := disk.FindTool("rdsquashfs", "squashfs-tools-ng"); err != nil {
		t.Skip(err)
	}
	return &imagePlan{img: &image.Image{}, rootfs: image.RootFS{Path: sq, FSType: image.FSTypeSquashfs}, mode: options.ModeBinary},
		&Spec{VMConfig: api.VMConfig{Image: "registry.example/team/app:1"}}
}

// TestBinaryModeStreamsTheProgram takes an 8 MiB program out of an image:
// it lands byte for byte in a file of the VM's directory, which the initrd
// is written from, without the process allocating anything near its size.
func TestBinaryModeStreamsTheProgram(t *testing.T) {
	prog := testenv.TinyELF(t, 8<<20, false)
	p, s := binaryImage(t, prog)
	ctx := context.Background()
	if err := p.findBinary(ctx, s); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.args, []string{"/usr/local/bin/app"}) {
		t.Errorf("args = %q, want the program", p.args)
	}
	dir := t.TempDir()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	files, drives, err := p.attach(ctx, dir, s)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 2<<20 {
		t.Errorf("extracting an 8 MiB program allocated %d bytes: it was held in memory", alloc)
	}
	if len(drives) != 0 || len(files) != 2 {
		t.Fatalf("attach = %+v, %+v; want the program and /etc/passwd, no drives", files, drives)
	}
	want := []kernel.File{
		{Path: "/usr/local/bin/app", Mode: 0o755, Source: filepath.Join(dir, "image-binary")},
		{Path: "/etc/passwd", Mode: 0o644, Source: filepath.Join(dir, "image-passwd")},
	}
	for i, f := range files {
		if f.Path != want[i].Path || f.Mode != want[i].Mode || f.Source != want[i].Source || f.Data != nil {
			t.Errorf("file %d = %+v, want %+v", i, f, want[i])
		}
	}
	if b, err := os.ReadFile(files[0].Source); err != nil || !bytes.Equal(b, prog) {
		t.Errorf("extracted program differs from the image's (%d bytes, %v)", len(b), err)
	}
}

// TestBinaryModeRefusesALargeProgram lowers the 1 GiB limit: a program
// over it is refused by its size in the image before anything is copied,
// and, should the size not tell, as soon as the stream passes the limit.
func TestBinaryModeRefusesALargeProgram(t *testing.T) {
	if maxBinarySize != 1<<30 || maxUserDBSize != 1<<20 {
		t.Errorf("limits %d, %d; docs/images.md says 1 GiB and 1 MiB", maxBinarySize, maxUserDBSize)
	}
	prog := testenv.TinyELF(t, 8<<20, false)
	p, s := binaryImage(t, prog)
	ctx := context.Background()
	defer func(old int64) { maxBinarySize = old }(maxBinarySize)
	maxBinarySize = 4 << 20
	err := p.findBinary(ctx, s)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "/usr/local/bin/app is 8388608 bytes, over the 4 MiB limit of binary mode") {
		t.Errorf("findBinary = %v, want the program refused naming its size and the limit", err)
	}
	if err == nil {
		return
	}

	// The stream is capped too.
	maxBinarySize = 1 << 30
	p, s = binaryImage(t, prog)
	if err := p.findBinary(ctx, s); err != nil {
		t.Fatal(err)
	}
	p.binary[0].max = 4 << 20
	dir := t.TempDir()
	_, _, err = p.attach(ctx, dir, s)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "/usr/local/bin/app is over the 4 MiB limit of binary mode") {
		t.Errorf("attach = %v, want the program refused naming the limit", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("left in the VM directory: %v", left)
	}

	// A file exactly at the limit is taken.
	p.binary[0].max = int64(len(prog))
	if _, _, err := p.attach(ctx, dir, s); err != nil {
		t.Errorf("a program at the limit: %v", err)
	}
}

func TestBinaryModeRefusesADynamicProgram(t *testing.T) {
	p, s := binaryImage(t, testenv.TinyELF(t, 1<<20, true))
	ctx := context.Background()
	if err := p.findBinary(ctx, s); err != nil {
		t.Fatal(err)
	}
	_, _, err := p.attach(ctx, t.TempDir(), s)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("attach = %v, want a dynamic program refused", err)
	}
}

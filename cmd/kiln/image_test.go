package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"kiln.dev/kiln/internal/image/layerpack"
	"kiln.dev/kiln/internal/testenv"
)

// These tests build images in the test (layers written as tar bytes),
// serve them from an in-process registry on loopback or load them from
// archives, and check from inside booted VMs that kiln runs them as the
// tar headers and image configs say.

const (
	regUser = "kiln"
	regPass = "s3cret"
	// debianRootfs is where scripts/fetch-test-rootfs puts a debootstrapped
	// Debian userland.
	debianRootfs = "/var/cache/kiln-test/debian-rootfs"
)

// tarEntry is one entry of a test layer.
type tarEntry struct {
	name         string
	typ          byte // 0: regular file
	body         []byte
	mode         int64
	uid, gid     int
	link         string
	major, minor int64
}

func file(name, body string, mode int64) tarEntry {
	return tarEntry{name: name, body: []byte(body), mode: mode}
}
func dir(name string, mode int64) tarEntry {
	return tarEntry{name: name, typ: tar.TypeDir, mode: mode}
}
func symlink(name, target string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}

func layerTar(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		h := &tar.Header{
			Typeflag: typ, Name: e.name, Linkname: e.link, Mode: mode,
			Uid: e.uid, Gid: e.gid, Devmajor: e.major, Devminor: e.minor,
			ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX,
		}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("writing tar header %s: %v", e.name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write(e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// busyboxApplets are linked to /bin/busybox in the test userland.
var busyboxApplets = []string{"sh", "ls", "stat", "cat", "readlink", "id", "pwd", "env", "test", "[", "echo", "true", "false", "mkdir", "touch", "rm"}

// userlandLayer is a small real userland: a static busybox with the
// applets the tests use, and a user database with a user "app"
// (1000:1001) who is also in group "extra" (2000).
func userlandLayer(t testing.TB) []byte {
	t.Helper()
	entries := append(busyboxBin(t, busyboxApplets),
		dir("etc/", 0o755),
		file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n", 0o644),
		file("etc/group", "root:x:0:\nappgrp:x:1001:\nextra:x:2000:app\n", 0o644),
		dir("root/", 0o700),
		dir("tmp/", 0o1777),
		dir("home/", 0o755),
		tarEntry{name: "home/app/", typ: tar.TypeDir, mode: 0o755, uid: 1000, gid: 1001},
	)
	return layerTar(t, entries...)
}

// busyboxBin is /bin of a test image: the host's static busybox and the
// applets linked to it. The test skips on a host without one.
func busyboxBin(t testing.TB, applets []string) []tarEntry {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("no /bin/busybox: run scripts/setup (apt-get install busybox-static)")
	}
	entries := []tarEntry{dir("bin/", 0o755), {name: "bin/busybox", body: bb, mode: 0o755}}
	for _, a := range applets {
		entries = append(entries, symlink("bin/"+a, "busybox"))
	}
	return entries
}

// testImage builds a linux/amd64 image from uncompressed layer tars.
func testImage(t testing.TB, edit func(*v1.Config), layers ...[]byte) v1.Image {
	t.Helper()
	img := empty.Image
	for _, l := range layers {
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(l)), nil
		}, tarball.WithCompressionLevel(gzip.BestSpeed))
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: time.Now().Add(-2 * time.Hour).UTC()}
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	if edit != nil {
		edit(&cf.Config)
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// loadImage loads img into the test's root as ref, from an OCI layout,
// and returns what `kiln load` printed.
func (e *env) loadImage(ref string, img v1.Image) result {
	e.t.Helper()
	dir := e.t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"io.containerd.image.name": ref})); err != nil {
		e.t.Fatal(err)
	}
	return ok(e.t, "load oci:", e.kiln("load", "oci:"+dir))
}

// testRegistry is an in-process registry on loopback that wants basic
// auth.
type testRegistry struct{ host string }

func newTestRegistry(t *testing.T) *testRegistry {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != regUser || p != regPass {
			w.Header().Set("WWW-Authenticate", `Basic realm="kiln-test"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	// The developer's own registry credentials stay out of kiln through
	// the env's home (see env.home), and out of the test's own pushes
	// through their explicit auth.
	return &testRegistry{host: strings.TrimPrefix(srv.URL, "http://")}
}

func (r *testRegistry) auth() remote.Option {
	return remote.WithAuth(&authn.Basic{Username: regUser, Password: regPass})
}

// push uploads img as repo:tag and returns its full reference.
func (r *testRegistry) push(t *testing.T, repoTag string, img v1.Image) string {
	t.Helper()
	ref := r.host + "/" + repoTag
	nr, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(nr, img, r.auth()); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return ref
}

// kilnStdin is e.kiln with stdin.
func (e *env) kilnStdin(stdin string, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := e.command(ctx, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("running kiln %v: %v", args, err)
	}
	return result{code, out.String(), errb.String()}
}

// login logs the env's kiln in to reg.
func (e *env) login(reg *testRegistry) {
	e.t.Helper()
	if r := e.kilnStdin(regPass+"\n", "login", reg.host, "-u", regUser, "--password-stdin"); r.code != 0 {
		e.t.Fatalf("kiln login:\n%s", r)
	}
}

// ok fails the test unless r exited 0.
func ok(t *testing.T, what string, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: want exit 0:\n%s", what, r)
	}
	return r
}

// tarSemanticsImage is a two-layer image: the userland, then a layer with
// owners, modes, links, a device node, a whiteout and an opaque directory.
func tarSemanticsImage(t *testing.T) v1.Image {
	base := userlandLayer(t)
	lower := layerTar(t,
		dir("data/", 0o755),
		file("data/base", "base\n", 0o644),
		file("etc/gone", "deleted by the upper layer\n", 0o644),
		dir("opq/", 0o755),
		file("opq/old", "hidden by the opaque marker\n", 0o644),
	)
	upper := layerTar(t,
		tarEntry{name: "data/owned", body: []byte("owned\n"), mode: 0o640, uid: 1000, gid: 1001},
		tarEntry{name: "data/suid", body: []byte("#!/bin/sh\n"), mode: 0o4755},
		symlink("data/link", "owned"),
		tarEntry{name: "data/hard", typ: tar.TypeLink, link: "data/owned"},
		tarEntry{name: "data/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		file("etc/.wh.gone", "", 0o644),
		dir("opq/", 0o755),
		file("opq/.wh..wh..opq", "", 0o644),
		file("opq/new", "new\n", 0o644),
	)
	return testImage(t, nil, base, lower, upper)
}

// tarCheck prints, from inside the guest, what the tests compare with the
// tar headers; then it writes to the root.
const tarCheck = `stat -c '%n %u:%g %a %F' /data/owned /data/suid /data/null /data/link
stat -c '%t:%T' /data/null
readlink /data/link
[ "$(stat -c %i /data/owned)" = "$(stat -c %i /data/hard)" ] && echo hard-same-inode
stat -c %h /data/owned
cat /data/hard
test -e /etc/gone && echo gone-present || echo gone-absent
ls /opq
test -e /data/new && echo new-present || echo new-absent
cat /data/base
echo written >/data/new && cat /data/new
echo changed >/data/base && cat /data/base
`

const tarCheckWant = `/data/owned 1000:1001 640 regular file
/data/suid 0:0 4755 regular file
/data/null 0:0 666 character special file
/data/link 0:0 777 symbolic link
1:3
owned
hard-same-inode
2
owned
gone-absent
new
new-absent
base
written
changed
`

func TestImagePullFromRegistryWithAuthAndRunKeepsTarSemantics(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := newTestRegistry(t)
	ref := reg.push(t, "team/tarcheck:v1", tarSemanticsImage(t))

	// Without credentials the registry refuses, and kiln says so.
	r := e.kiln("pull", ref)
	if r.code != 125 || !strings.Contains(r.stderr, "unauthorized") {
		t.Fatalf("pull without login: want exit 125 and an unauthorized error:\n%s", r)
	}
	e.login(reg)
	info, err := os.Stat(filepath.Join(e.root, "auth.json"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("auth.json: %v, mode %v; want 0600", err, info.Mode())
	}
	r = ok(t, "kiln pull", e.kiln("pull", ref))
	if !strings.HasPrefix(strings.TrimSpace(r.stdout), "sha256:") {
		t.Errorf("pull printed %q on stdout, want the image ID", r.stdout)
	}
	// Not a terminal: one line per layer, on stderr.
	if n := strings.Count(r.stderr, ": done ("); n != 3 {
		t.Errorf("pull progress: want a done line for each of the 3 layers, got %d:\n%s", n, r.stderr)
	}

	// Two runs, each on its own writable layer over the same base.
	for i := 0; i < 2; i++ {
		r = e.run("--rm", ref, "/bin/sh", "-c", tarCheck)
		if r.code != 0 || r.stdout != tarCheckWant {
			t.Fatalf("run %d: in-guest view of the image:\n%s\nwant stdout:\n%s", i+1, r, tarCheckWant)
		}
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("--rm left VM directories: %v", d)
	}
}

func TestImageConfigIsHonoured(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := newTestRegistry(t)
	img := testImage(t, func(c *v1.Config) {
		c.Entrypoint = []string{"/bin/sh", "-c"}
		c.Cmd = []string{`echo cmd=default; id; pwd; echo greeting=$GREETING home=$HOME`}
		c.Env = append(c.Env, "GREETING=from-image")
		c.WorkingDir = "/work"
		c.User = "app"
		c.ExposedPorts = map[string]struct{}{"8080/tcp": {}}
		c.StopSignal = "SIGQUIT"
	}, userlandLayer(t))
	ref := reg.push(t, "cfg:1", img)
	e.login(reg)

	r := ok(t, "run with the image's config", e.run("--name", "cfg", ref))
	for _, want := range []string{"cmd=default\n", "uid=1000(app) gid=1001(appgrp)", "2000(extra)", "\n/work\n", "greeting=from-image home=/home/app\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r)
		}
	}
	if !strings.Contains(r.stderr, ": done (") {
		t.Errorf("run pulled the missing image without showing progress:\n%s", r)
	}
	var rec struct {
		Spec struct {
			ImageID      string   `json:"imageID"`
			ExposedPorts []string `json:"exposedPorts"`
		} `json:"spec"`
		Guest struct {
			StopSignal int `json:"stopSignal"`
		} `json:"guest"`
	}
	dirs := e.vmDirs()
	if len(dirs) != 1 {
		t.Fatalf("want one VM directory, got %v", dirs)
	}
	b, err := os.ReadFile(filepath.Join(e.root, "vms", dirs[0], "vm.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.Spec.ExposedPorts) != 1 || rec.Spec.ExposedPorts[0] != "8080/tcp" || rec.Guest.StopSignal != int(syscall.SIGQUIT) || !strings.HasPrefix(rec.Spec.ImageID, "sha256:") {
		t.Errorf("vm.json: exposed ports %q, stop signal %d, image %q; want [8080/tcp], %d, an image ID",
			rec.Spec.ExposedPorts, rec.Guest.StopSignal, rec.Spec.ImageID, syscall.SIGQUIT)
	}

	// Arguments replace Cmd; -e, -u and -w override the image.
	r = ok(t, "run with overrides", e.run("--rm", "-e", "GREETING=user", "-u", "0", "-w", "/tmp", ref,
		`echo args-replaced; id -u; pwd; echo greeting=$GREETING home=$HOME`))
	if want := "args-replaced\n0\n/tmp\ngreeting=user home=/root\n"; r.stdout != want {
		t.Errorf("overrides: stdout %q, want %q\n%s", r.stdout, want, r)
	}
	// A user by uid:group name; a numeric user without a passwd entry.
	r = ok(t, "run as uid:group", e.run("--rm", "-u", "1000:extra", ref, "id"))
	if !strings.Contains(r.stdout, "uid=1000(app) gid=2000(extra)") {
		t.Errorf("-u 1000:extra: %q", r.stdout)
	}
	r = ok(t, "run as an unknown uid", e.run("--rm", "-u", "4242", ref, "id -u; id -g; echo home=$HOME"))
	if r.stdout != "4242\n0\nhome=/\n" {
		t.Errorf("-u 4242: stdout %q, want 4242, gid 0 and HOME=/ as docker gives", r.stdout)
	}
	r = e.run("--rm", "-u", "nobody", ref, "id")
	if r.code != 125 || !strings.Contains(r.stderr, "unable to find user nobody") {
		t.Errorf("-u nobody: want exit 125 and a clear error:\n%s", r)
	}
	// --entrypoint drops the image's Cmd unless arguments are given.
	r = ok(t, "run with --entrypoint", e.run("--rm", "--entrypoint", "/bin/echo", ref))
	if r.stdout != "\n" {
		t.Errorf("--entrypoint without arguments: stdout %q, want an empty line (the image's Cmd dropped)", r.stdout)
	}
	r = ok(t, "run with --entrypoint and args", e.run("--rm", "--entrypoint", "/bin/echo", ref, "hi", "there"))
	if r.stdout != "hi there\n" {
		t.Errorf("--entrypoint with arguments: stdout %q", r.stdout)
	}
}

func TestImageBinaryModeBootsOnlyTheELF(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := newTestRegistry(t)
	hello, err := os.ReadFile(e.hello())
	if err != nil {
		t.Fatal(err)
	}
	layer := append([]tarEntry{}, dir("usr/", 0o755), dir("usr/local/", 0o755), dir("usr/local/bin/", 0o755),
		tarEntry{name: "usr/local/bin/hello", body: hello, mode: 0o755})
	// The image also has a shell, which binary mode must leave out.
	plain := reg.push(t, "tools/hello:1", testImage(t, nil, userlandLayer(t), layerTar(t, layer...)))
	labelled := reg.push(t, "svc/hello-svc:1", testImage(t, func(c *v1.Config) {
		c.Entrypoint = []string{"/usr/local/bin/hello"}
		c.Labels = map[string]string{"dev.kiln.mode": "binary"}
	}, layerTar(t, layer...)))
	e.login(reg)

	r := ok(t, "--mode binary", e.run("--rm", "--mode", "binary", plain))
	if !strings.Contains(r.stdout, "hello from ") {
		t.Errorf("binary mode did not run /usr/local/bin/hello:\n%s", r)
	}
	r = e.run("--rm", "--mode", "binary", plain, "/bin/sh", "-c", "true")
	if r.code != 127 || !strings.Contains(r.stderr, "/bin/sh") {
		t.Errorf("binary mode has a /bin/sh (want exit 127, not found):\n%s", r)
	}
	// The label picks binary mode; the entrypoint takes the arguments.
	r = e.run("--name", "svc", labelled, "-exit", "3", "x")
	if r.code != 3 || !strings.Contains(r.stdout, `args: ["x"]`) {
		t.Errorf("labelled image: want exit 3 and args [x]:\n%s", r)
	}
	dirs := e.vmDirs()
	if len(dirs) != 1 {
		t.Fatalf("want one VM directory, got %v", dirs)
	}
	if _, err := os.Stat(filepath.Join(e.root, "vms", dirs[0], "disk.ext4")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("binary mode made a writable disk: %v", err)
	}
	b, _ := os.ReadFile(filepath.Join(e.root, "vms", dirs[0], "vm.json"))
	if bytes.Contains(b, []byte(`"Drives"`)) && !bytes.Contains(b, []byte(`"Drives": null`)) {
		t.Errorf("binary mode attached disks:\n%s", b)
	}
	// A dynamically linked program cannot be a binary-mode VM.
	dyn := reg.push(t, "dyn/sh:1", testImage(t, func(c *v1.Config) {
		c.Entrypoint = []string{"/usr/local/bin/sh"}
	}, layerTar(t, dir("usr/", 0o755), dir("usr/local/", 0o755), dir("usr/local/bin/", 0o755),
		tarEntry{name: "usr/local/bin/sh", body: mustRead(t, "/bin/sh"), mode: 0o755})))
	r = e.run("--rm", "--mode", "binary", dyn)
	if r.code != 125 || !strings.Contains(r.stderr, "dynamically linked") {
		t.Errorf("binary mode of a dynamic program: want exit 125 naming the problem:\n%s", r)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestImageRmiRefusedWhileAVMUsesIt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := newTestRegistry(t)
	ref := reg.push(t, "rmi/used:1", testImage(t, nil, userlandLayer(t)))
	e.login(reg)
	ok(t, "run", e.run("--name", "user1", ref, "true"))

	r := e.kiln("rmi", ref)
	if r.code != 125 || !strings.Contains(r.stderr, "user1") || len(errorLines(r.stderr)) != 1 {
		t.Fatalf("rmi of an image in use: want exit 125 and one line naming the VM:\n%s", r)
	}
	if r := ok(t, "images", e.kiln("images", "-q")); len(strings.Fields(r.stdout)) != 1 {
		t.Fatalf("the refused rmi removed the image:\n%s", r)
	}
	r = ok(t, "rmi -f", e.kiln("rmi", "-f", ref))
	if !strings.Contains(r.stdout, "Deleted: sha256:") {
		t.Errorf("rmi -f: stdout %q", r.stdout)
	}
	if r := ok(t, "images", e.kiln("images", "-q")); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("image still listed after rmi -f:\n%s", r)
	}
}

func TestImageSecondRunDoesNoConversion(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := newTestRegistry(t)
	ref := reg.push(t, "cache/me:1", testImage(t, nil, userlandLayer(t)))
	e.login(reg)
	ok(t, "first run", e.run("--rm", ref, "true"))
	builds, _ := filepath.Glob(filepath.Join(e.root, "images", "rootfs", "*.sqfs"))
	if len(builds) != 1 {
		t.Fatalf("want one root filesystem after the first run, got %v", builds)
	}
	before := fileStamp(t, builds[0])
	ok(t, "second run", e.run("--rm", ref, "true"))
	if after := fileStamp(t, builds[0]); after != before {
		t.Errorf("the second run rebuilt the root filesystem: %+v -> %+v", before, after)
	}
	if again, _ := filepath.Glob(filepath.Join(e.root, "images", "rootfs", "*.sqfs")); len(again) != 1 {
		t.Errorf("root filesystems after two runs: %v", again)
	}
}

type stamp struct {
	ino   uint64
	mtime int64
}

func fileStamp(t *testing.T, p string) stamp {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return stamp{st.Ino, st.Mtim.Nano()}
}

func TestImageBadInputFailsCleanly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := newTestRegistry(t)
	noCmd := reg.push(t, "nocmd:1", testImage(t, nil, userlandLayer(t)))
	e.login(reg)
	ok(t, "pull", e.kiln("pull", noCmd)) // so that run prints no progress
	tests := []struct {
		name string
		args []string
		want string // in the one error line
	}{
		{"unknown image, never pull", []string{"--pull", "never", "nosuch/image:v9"}, "nosuch/image:v9 is not in the store, and the pull policy is never"},
		{"malformed reference", []string{"Bad:Ref:::"}, `invalid image reference "Bad:Ref:::"`},
		{"unknown registry repository", []string{reg.host + "/nosuch:1"}, "not found"},
		{"no command", []string{noCmd}, "has no command"},
		{"bad pull policy", []string{"--pull", "sometimes", noCmd}, `invalid pull policy "sometimes"`},
		{"bad mode", []string{"--mode", "half", noCmd, "true"}, `invalid mode "half"`},
		{"mode for a program", []string{"--mode", "binary", e.hello()}, "apply to images"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.run(tt.args...)
			lines := errorLines(r.stderr)
			if r.code != 125 || len(lines) != 1 || !strings.Contains(lines[0], tt.want) {
				t.Errorf("want exit 125 and one error line containing %q:\n%s", tt.want, r)
			}
			if d := e.vmDirs(); len(d) != 0 {
				t.Errorf("a failed run left VM directories: %v", d)
			}
		})
	}
}

func TestImageLoadListPushPrune(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := newTestRegistry(t)
	img := testImage(t, func(c *v1.Config) { c.Cmd = []string{"/bin/sh"} }, userlandLayer(t),
		layerTar(t, file("hello.txt", "hi\n", 0o644)))
	archive := filepath.Join(t.TempDir(), "app.tar")
	tag, err := name.NewTag("kiln-test/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	r := ok(t, "load", e.kiln("load", "-i", archive))
	if !strings.Contains(r.stdout, "Loaded image: kiln-test/app:v1") {
		t.Errorf("load: stdout %q", r.stdout)
	}
	// As `docker save | gzip` makes it: the same image again.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if b, err := os.ReadFile(archive); err != nil {
		t.Fatal(err)
	} else {
		zw.Write(b)
	}
	zw.Close()
	if err := os.WriteFile(archive+".gz", gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := ok(t, "load .tar.gz", e.kiln("load", "-i", archive+".gz")); !strings.Contains(r.stdout, "Loaded image: kiln-test/app:v1") {
		t.Errorf("load .tar.gz: stdout %q", r.stdout)
	}
	r = ok(t, "images", e.kiln("images"))
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "REPOSITORY TAG DIGEST SIZE CREATED" {
		t.Fatalf("images table:\n%s", r.stdout)
	}
	row := strings.Fields(lines[1])
	if row[0] != "kiln-test/app" || row[1] != "v1" || !strings.HasPrefix(row[2], "sha256:") || !strings.Contains(lines[1], "2 hours ago") {
		t.Errorf("images row %q", lines[1])
	}
	r = ok(t, "images --format json", e.kiln("images", "--format", "json"))
	var listed struct {
		ID       string   `json:"id"`
		RepoTags []string `json:"repoTags"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil || len(listed.RepoTags) != 1 {
		t.Errorf("images --format json: %v\n%s", err, r.stdout)
	}
	wantID, _ := img.ConfigName()
	if listed.ID != wantID.String() {
		t.Errorf("listed ID %s, want the config digest %s", listed.ID, wantID)
	}

	e.login(reg)
	dst := reg.host + "/pushed/app:v1"
	ok(t, "push", e.kiln("push", "kiln-test/app:v1", dst))
	pushed, err := remote.Image(mustRef(t, dst), reg.auth())
	if err != nil {
		t.Fatalf("reading the pushed image back: %v", err)
	}
	if got, _ := pushed.ConfigName(); got != wantID {
		t.Errorf("pushed image has ID %s, want %s", got, wantID)
	}

	r = ok(t, "rmi", e.kiln("rmi", "kiln-test/app:v1"))
	if !strings.Contains(r.stdout, "Deleted: "+wantID.String()) {
		t.Errorf("rmi: stdout %q", r.stdout)
	}
	r = ok(t, "image prune", e.kiln("image", "prune"))
	if !strings.Contains(r.stdout, "Total reclaimed space: ") || strings.Contains(r.stdout, "space: 0B") {
		t.Errorf("prune freed nothing: %q", r.stdout)
	}
	if blobs, _ := os.ReadDir(filepath.Join(e.root, "images", "blobs", "sha256")); len(blobs) != 0 {
		t.Errorf("blobs left after rmi and prune: %d", len(blobs))
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// dirLayers packs a directory tree into two layers, split by top-level
// entry (in the first layer when first says so), keeping owners, modes,
// symlinks, hard links and device nodes as they are on disk.
func dirLayers(t *testing.T, root string, first func(top string) bool) [2][]byte {
	t.Helper()
	layers, err := layerpack.Dir(root, 2, func(top string) int {
		if first(top) {
			return 0
		}
		return 1
	}, ".complete")
	if err != nil {
		t.Fatal(err)
	}
	return [2][]byte{layers[0], layers[1]}
}

func TestImageDebianBootsAndWritesItsOwnLayer(t *testing.T) {
	t.Parallel()
	testenv.NeedVM(t)
	if _, err := os.Stat(filepath.Join(debianRootfs, ".complete")); err != nil {
		t.Skipf("no Debian userland at %s: run scripts/fetch-test-rootfs (make test does)", debianRootfs)
	}
	e := newEnv(t)
	// /usr (the programs and libraries) in one layer, the rest (/etc,
	// /var, the merged-/usr links) in the other.
	layers := dirLayers(t, debianRootfs, func(top string) bool { return top == "usr" })
	img := testImage(t, func(c *v1.Config) {
		c.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		c.Cmd = []string{"/bin/bash"}
	}, layers[0], layers[1])
	r := e.loadImage("kiln-test/debian:bookworm", img)
	if !strings.Contains(r.stdout, "kiln-test/debian:bookworm") {
		t.Errorf("load: %q", r.stdout)
	}
	script := `cat /etc/debian_version; echo hi > /root/x; cat /root/x; ls -ld /root | cut -d' ' -f1; id -un; echo home=$HOME`
	r = ok(t, "run Debian", e.run("--rm", "--pull", "never", "--memory", "256m", "kiln-test/debian:bookworm", "/bin/sh", "-c", script))
	version, _ := os.ReadFile(filepath.Join(debianRootfs, "etc", "debian_version"))
	want := string(version) + "hi\ndrwx------\nroot\nhome=/root\n"
	if r.stdout != want {
		t.Errorf("Debian run: stdout %q, want %q\n%s", r.stdout, want, r)
	}
	// The write went to that VM's layer: a new VM does not see it.
	r = ok(t, "run Debian again", e.run("--rm", "--pull", "never", "kiln-test/debian:bookworm", "/bin/sh", "-c", "test -e /root/x && echo seen || echo unseen"))
	if r.stdout != "unseen\n" {
		t.Errorf("second VM: %q, want unseen", r.stdout)
	}
}

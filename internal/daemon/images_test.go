package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/supervisor"
	"kiln.dev/kiln/internal/vm"
	"kiln.dev/kiln/internal/vmm"
)

const regUser, regPass = "kiln", "s3cret"

// imageDaemon is a daemon over a fresh root that can create VMs (not
// start them): the host has no KVM, and the kernel, kiln-init and QEMU
// are stand-ins, since creating a VM only records their paths.
func imageDaemon(t *testing.T) (*Daemon, http.Handler) {
	t.Helper()
	home := t.TempDir() // no docker credentials of the developer's
	for _, k := range []string{"HOME", "DOCKER_CONFIG", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"} {
		t.Setenv(k, home)
	}
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(home, "none.json"))
	root := t.TempDir()
	db, err := state.Open(filepath.Join(root, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() }) // after the supervisor's Close
	init := filepath.Join(root, "kiln-init")
	if err := os.WriteFile(init, []byte("stand-in"), 0o755); err != nil {
		t.Fatal(err)
	}
	noKVM := vmm.Host{Exists: func(string) bool { return false }, OpenRW: func(string) error { return os.ErrNotExist }}
	lg := slog.New(slog.DiscardHandler)
	rt, err := vm.New(root, vm.WithLogger(lg), vm.WithHost(noKVM, vm.HostLimits{MemoryMiB: 4096, CPUs: 2}),
		vm.WithInit(init), vm.WithQEMU("/bin/true"))
	if err != nil {
		t.Fatal(err)
	}
	sup := supervisor.New(rt, db, lg)
	t.Cleanup(sup.Close)
	d := &Daemon{cfg: Config{Root: root}, db: db, rt: rt, sup: sup, log: lg, uid: os.Geteuid()}
	return d, d.routes()
}

func request(t *testing.T, h http.Handler, method, target string, body io.Reader) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, body)
	req = req.WithContext(context.WithValue(req.Context(), peerKey{}, os.Geteuid()))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func jsonBody(t *testing.T, v any) io.Reader {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(b)
}

// authRegistry is an in-process registry on loopback that wants basic
// auth; a request fail answers true for is answered with garbage.
type authRegistry struct {
	host string
	fail func(*http.Request) bool
}

func newAuthRegistry(t *testing.T) *authRegistry {
	t.Helper()
	ar := &authRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != regUser || p != regPass {
			w.Header().Set("WWW-Authenticate", `Basic realm="kiln-test"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		if ar.fail != nil && ar.fail(r) {
			io.WriteString(w, "not the blob you asked for")
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	ar.host = strings.TrimPrefix(srv.URL, "http://")
	return ar
}

func (ar *authRegistry) push(t *testing.T, repoTag string, img v1.Image) string {
	t.Helper()
	ref := ar.host + "/" + repoTag
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: regUser, Password: regPass})); err != nil {
		t.Fatal(err)
	}
	return ref
}

// runnableImage is a random image with a command, so a VM can be made
// from it.
func runnableImage(t *testing.T, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(512, layers)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Cmd = []string{"/bin/true"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func login(t *testing.T, h http.Handler, host string) {
	t.Helper()
	if w := request(t, h, "POST", "/v1/auth", jsonBody(t, api.LoginRequest{Registry: host, Username: regUser, Password: regPass})); w.Code != http.StatusNoContent {
		t.Fatalf("login: %d %s", w.Code, w.Body)
	}
}

func messages(t *testing.T, w *httptest.ResponseRecorder) []api.JSONMessage {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); w.Code != http.StatusOK || ct != "application/x-ndjson" {
		t.Fatalf("answer %d (%s): %s", w.Code, ct, w.Body)
	}
	var out []api.JSONMessage
	dec := json.NewDecoder(w.Body)
	for dec.More() {
		var m api.JSONMessage
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("decoding stream: %v", err)
		}
		out = append(out, m)
	}
	return out
}

func TestPullStreamsProgressThenTheImage(t *testing.T) {
	_, h := imageDaemon(t)
	reg := newAuthRegistry(t)
	ref := reg.push(t, "app:v1", runnableImage(t, 2))
	login(t, h, reg.host)
	msgs := messages(t, request(t, h, "POST", "/v1/images/pull", jsonBody(t, api.PullRequest{Ref: ref})))
	done := 0
	for _, m := range msgs[:len(msgs)-1] {
		if m.ProgressDetail == nil || !strings.HasPrefix(m.ID, "sha256:") || len(m.ID) != len("sha256:")+12 || m.Error != "" {
			t.Errorf("progress message %+v", m)
		}
		if m.Status == api.StatusDownloadComplete {
			done++
		}
	}
	if done != 2 {
		t.Errorf("%d layers completed, want 2: %+v", done, msgs)
	}
	var img api.Image
	if err := json.Unmarshal(msgs[len(msgs)-1].Aux, &img); err != nil || !strings.HasPrefix(img.ID, "sha256:") || len(img.RepoTags) != 1 {
		t.Errorf("last message %+v: image %+v, %v", msgs[len(msgs)-1], img, err)
	}
}

// A failure after the stream began ends it with an error message carrying
// the status the error would have had; here a corrupt layer follows one
// already stored.
func TestPullErrorMidStream(t *testing.T) {
	_, h := imageDaemon(t)
	reg := newAuthRegistry(t)
	base := runnableImage(t, 1)
	extra, err := random.Layer(512, "application/vnd.docker.image.rootfs.diff.tar.gzip")
	if err != nil {
		t.Fatal(err)
	}
	bigger, err := mutate.AppendLayers(base, extra)
	if err != nil {
		t.Fatal(err)
	}
	baseRef := reg.push(t, "app:base", base)
	ref := reg.push(t, "app:bigger", bigger)
	login(t, h, reg.host)
	messages(t, request(t, h, "POST", "/v1/images/pull", jsonBody(t, api.PullRequest{Ref: baseRef})))
	d, _ := extra.Digest()
	reg.fail = func(r *http.Request) bool { return strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) }

	msgs := messages(t, request(t, h, "POST", "/v1/images/pull", jsonBody(t, api.PullRequest{Ref: ref})))
	if msgs[0].Status != api.StatusAlreadyExists {
		t.Errorf("first message %+v, want the stored layer", msgs[0])
	}
	last := msgs[len(msgs)-1]
	if last.Error == "" || last.ErrorDetail == nil || last.ErrorDetail.Code != http.StatusBadRequest ||
		last.ErrorDetail.Message != last.Error || !strings.Contains(last.Error, "corrupt") {
		t.Errorf("last message %+v, want a corrupt-content error with code 400", last)
	}
}

// Bad credentials are the same error, with the same status, whether the
// pull was asked for or came with a VM's creation.
func TestBadCredentialsSameStatusOnBothEndpoints(t *testing.T) {
	d, h := imageDaemon(t)
	reg := newAuthRegistry(t)
	ref := reg.push(t, "app:v1", runnableImage(t, 1))
	kernel := filepath.Join(d.cfg.Root, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("stand-in"), 0o644); err != nil {
		t.Fatal(err)
	}
	pull := request(t, h, "POST", "/v1/images/pull", jsonBody(t, api.PullRequest{Ref: ref}))
	create := request(t, h, "POST", "/v1/vms", jsonBody(t, api.VMConfig{Image: ref, Kernel: kernel, Pull: "always"}))
	for what, w := range map[string]*httptest.ResponseRecorder{"pull": pull, "create": create} {
		var e api.Error
		if err := json.NewDecoder(w.Body).Decode(&e); err != nil || w.Code != http.StatusBadRequest || !strings.Contains(e.Message, "unauthorized") {
			t.Errorf("%s without credentials: %d %+v (%v), want 400 unauthorized", what, w.Code, e, err)
		}
	}
}

func TestLoadFromTheBody(t *testing.T) {
	_, h := imageDaemon(t)
	img := runnableImage(t, 1)
	tag, _ := name.NewTag("kiln-test/app:v1")
	var archive bytes.Buffer
	if err := tarball.Write(tag, img, &archive); err != nil {
		t.Fatal(err)
	}
	w := request(t, h, "POST", "/v1/images/load?name=app.tar", &archive)
	var loaded []api.Image
	if err := json.NewDecoder(w.Body).Decode(&loaded); err != nil || w.Code != http.StatusOK || len(loaded) != 1 || len(loaded[0].RepoTags) != 1 {
		t.Fatalf("load: %d %+v %v", w.Code, loaded, err)
	}
	if id, _ := img.ConfigName(); loaded[0].ID != id.String() || loaded[0].Config.Cmd[0] != "/bin/true" {
		t.Errorf("loaded %+v, want ID %s with its config", loaded[0], id)
	}
	w = request(t, h, "POST", "/v1/images/load?name=junk.tar", strings.NewReader("junk"))
	var e api.Error
	if err := json.NewDecoder(w.Body).Decode(&e); err != nil || w.Code != http.StatusBadRequest || !strings.Contains(e.Message, "junk.tar") {
		t.Errorf("load of junk: %d %+v", w.Code, e)
	}
}

// TestRemoveImagePolicy: untagging an image that keeps another tag is
// always allowed; otherwise an image a VM was made from is refused with
// 409 naming the VM, unless forced.
func TestRemoveImagePolicy(t *testing.T) {
	d, h := imageDaemon(t)
	img := runnableImage(t, 1)
	id, _ := img.ConfigName()
	a, _ := name.NewTag("kiln-test/app:a")
	b, _ := name.NewTag("kiln-test/app:b")
	var archive bytes.Buffer
	if err := tarball.MultiWrite(map[name.Tag]v1.Image{a: img, b: img}, &archive); err != nil {
		t.Fatal(err)
	}
	if w := request(t, h, "POST", "/v1/images/load", &archive); w.Code != http.StatusOK {
		t.Fatalf("load: %d %s", w.Code, w.Body)
	}
	kernel := filepath.Join(d.cfg.Root, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("stand-in"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A stand-in for the image's root filesystem, as a build would cache
	// it, so that creating the VM needs no tar2sqfs.
	sqfs := filepath.Join(d.cfg.Root, "images", "rootfs", id.Hex+".sqfs")
	if err := os.WriteFile(sqfs, []byte("stand-in"), 0o644); err != nil {
		t.Fatal(err)
	}
	if w := request(t, h, "POST", "/v1/vms", jsonBody(t, api.VMConfig{Name: "user1", Image: "kiln-test/app:a", Kernel: kernel, Pull: "never"})); w.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", w.Code, w.Body)
	}
	rmi := func(ref string, force bool) (int, []api.ImageDeleted, string) {
		q := "/v1/images?ref=" + ref
		if force {
			q += "&force=1"
		}
		w := request(t, h, "DELETE", q, nil)
		if w.Code != http.StatusOK {
			var e api.Error
			_ = json.NewDecoder(w.Body).Decode(&e)
			return w.Code, nil, e.Message
		}
		var out []api.ImageDeleted
		if err := json.NewDecoder(w.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		return w.Code, out, ""
	}
	// The image keeps b: untagging a is allowed though user1 uses it.
	if code, out, msg := rmi("kiln-test/app:a", false); code != http.StatusOK || len(out) != 1 || out[0].Untagged != a.Name() {
		t.Errorf("untag a: %d %+v %s", code, out, msg)
	}
	// b is the last tag: removing it deletes the image, which user1 uses.
	if code, _, msg := rmi("kiln-test/app:b", false); code != http.StatusConflict || !strings.Contains(msg, "user1") {
		t.Errorf("rmi of a used image: %d %q, want 409 naming user1", code, msg)
	}
	if code, _, msg := rmi(id.String(), false); code != http.StatusConflict {
		t.Errorf("rmi by ID of a used image: %d %q, want 409", code, msg)
	}
	code, out, msg := rmi("kiln-test/app:b", true)
	if code != http.StatusOK || len(out) != 2 || out[0].Untagged != b.Name() || out[1].Deleted != id.String() {
		t.Errorf("rmi -f: %d %+v %s", code, out, msg)
	}
	if code, _, _ := rmi("kiln-test/app:b", true); code != http.StatusNotFound {
		t.Errorf("rmi of a removed image: %d, want 404", code)
	}
}

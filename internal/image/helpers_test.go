package image

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const (
	testUser = "kiln"
	testPass = "s3cret"
)

// entry describes one tar entry for test layers.
type entry struct {
	name     string
	typ      byte // 0 means regular file
	body     string
	mode     int64
	uid, gid int
	link     string
	major    int64
	minor    int64
	xattrs   map[string]string
	size     int64 // overrides len(body) in the header when non-zero
}

// layerTar builds an uncompressed layer tar from entries.
func layerTar(t testing.TB, entries ...entry) []byte {
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
			if typ == tar.TypeDir {
				mode = 0o755
			}
		}
		h := &tar.Header{
			Typeflag: typ, Name: e.name, Linkname: e.link, Mode: mode,
			Uid: e.uid, Gid: e.gid, Devmajor: e.major, Devminor: e.minor,
			ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX,
		}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("writing header %q: %v", e.name, err)
		}
		if typ == tar.TypeReg {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// testImage builds a linux/amd64 image from uncompressed layer tars.
func testImage(t testing.TB, edit func(*v1.ConfigFile), layers ...[]byte) v1.Image {
	t.Helper()
	img := empty.Image
	for _, l := range layers {
		l := l
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(l)), nil
		})
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
	cf.Created = v1.Time{Time: time.Unix(1700000000, 0).UTC()}
	cf.Config.Cmd = []string{"/bin/app"}
	cf.Config.Env = []string{"PATH=/bin"}
	if edit != nil {
		edit(cf)
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// simpleImage is a one-layer image whose content depends on tag, so
// different tags give different IDs.
func simpleImage(t testing.TB, tag string) v1.Image {
	return testImage(t, nil, layerTar(t,
		entry{name: "bin/", typ: tar.TypeDir},
		entry{name: "bin/app", body: "app " + tag, mode: 0o755},
	))
}

// testRegistry is an in-process registry on loopback that requires basic
// auth, optionally with a hook to tamper with responses.
type testRegistry struct {
	srv  *httptest.Server
	host string
	// tamper, if set, may serve a request itself and return true.
	tamper func(w http.ResponseWriter, r *http.Request) bool
}

func newRegistry(t testing.TB) *testRegistry {
	t.Helper()
	tr := &testRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != testUser || p != testPass {
			w.Header().Set("WWW-Authenticate", `Basic realm="kiln-test"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		if tr.tamper != nil && tr.tamper(w, r) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	tr.host = strings.TrimPrefix(tr.srv.URL, "http://")
	return tr
}

func (tr *testRegistry) auth() remote.Option {
	return remote.WithAuth(&authn.Basic{Username: testUser, Password: testPass})
}

// push uploads img as repo:tag and returns the full reference.
func (tr *testRegistry) push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	ref := tr.host + "/" + repoTag
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, tr.auth()); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return ref
}

// isolateCreds keeps the developer's real docker credentials out of tests.
func isolateCreds(t *testing.T) {
	t.Helper()
	d := t.TempDir()
	t.Setenv("HOME", d)
	t.Setenv("DOCKER_CONFIG", d)
	t.Setenv("REGISTRY_AUTH_FILE", d+"/none.json")
	t.Setenv("XDG_RUNTIME_DIR", d)
	t.Setenv("XDG_CONFIG_HOME", d)
}

// newStore opens a store in a fresh directory, logged in to reg if set.
func newStore(t *testing.T, reg *testRegistry, opts ...Option) *Store {
	t.Helper()
	isolateCreds(t)
	s, err := Open(t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	if reg != nil {
		if err := s.Login(reg.host, testUser, testPass); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func digestOf(t testing.TB, img v1.Image) (manifest, config string) {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	c, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return d.String(), c.String()
}

func ctx(t *testing.T) context.Context { return t.Context() }

// memSpool is a spool in memory, the spool of flatten in tests.
type memSpool struct{ b []byte }

func (m *memSpool) Write(p []byte) (int, error) {
	m.b = append(m.b, p...)
	return len(p), nil
}

func (m *memSpool) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

package image

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestLoginThenPull(t *testing.T) {
	reg := newRegistry(t)
	ref := reg.push(t, "app:v1", simpleImage(t, "v1"))
	s := newStore(t, nil)

	_, err := s.Pull(ctx(t), ref, PullOptions{})
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Pull without login = %v, want ErrUnauthorized", err)
	}
	if err := s.Login(reg.host, testUser, "wrong"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx(t), ref, PullOptions{}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Pull with a wrong password = %v, want ErrUnauthorized", err)
	}
	if err := s.Login("http://"+reg.host+"/v2/", testUser, testPass); err != nil {
		t.Fatal(err)
	}
	img, err := s.Pull(ctx(t), ref, PullOptions{})
	if err != nil {
		t.Fatalf("Pull after login: %v", err)
	}
	if img.Config.Cmd[0] != "/bin/app" {
		t.Errorf("Cmd = %q", img.Config.Cmd)
	}

	fi, err := os.Stat(filepath.Join(s.root, "auth.json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("auth.json mode = %v, want 0600", fi.Mode().Perm())
	}
	var cfg struct {
		Auths map[string]struct{ Auth string } `json:"auths"`
	}
	b, _ := os.ReadFile(filepath.Join(s.root, "auth.json"))
	if err := json.Unmarshal(b, &cfg); err != nil || cfg.Auths[reg.host].Auth == "" {
		t.Errorf("auth.json is not docker config format: %s (%v)", b, err)
	}
	if err := s.Logout(reg.host); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx(t), ref, PullOptions{}); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Pull after logout = %v, want ErrUnauthorized", err)
	}
}

func TestPullByTagAndDigest(t *testing.T) {
	reg := newRegistry(t)
	src := simpleImage(t, "v1")
	ref := reg.push(t, "team/app:v1", src)
	manifest, config := digestOf(t, src)
	s := newStore(t, reg)

	var (
		mu      sync.Mutex
		reports []Progress
	)
	s.progress = func(p Progress) { mu.Lock(); reports = append(reports, p); mu.Unlock() }

	byTag, err := s.Pull(ctx(t), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if byTag.ID != config || byTag.Digest != manifest {
		t.Errorf("ID, Digest = %s, %s; want %s, %s", byTag.ID, byTag.Digest, config, manifest)
	}
	if len(byTag.RepoTags) != 1 || byTag.RepoTags[0] != ref {
		t.Errorf("RepoTags = %q, want [%s]", byTag.RepoTags, ref)
	}
	if len(reports) == 0 || reports[len(reports)-1].Complete != reports[len(reports)-1].Total {
		t.Errorf("progress reports = %+v, want a completed one", reports)
	}

	digestRef := reg.host + "/team/app@" + manifest
	byDigest, err := s.Pull(ctx(t), digestRef, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if byDigest.ID != byTag.ID {
		t.Errorf("pull by digest gave %s, by tag %s", byDigest.ID, byTag.ID)
	}
	for _, q := range []string{ref, digestRef, config, manifest, hexOf(config)[:12], "sha256:" + hexOf(config)[:5]} {
		got, err := s.Get(q)
		if err != nil {
			t.Errorf("Get(%q): %v", q, err)
			continue
		}
		if got.ID != config {
			t.Errorf("Get(%q).ID = %s, want %s", q, got.ID, config)
		}
	}
	if _, err := s.Get(reg.host + "/team/app:v2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(unknown tag) = %v, want ErrNotFound", err)
	}
	if _, err := s.Pull(ctx(t), reg.host+"/team/app:nope", PullOptions{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Pull(unknown tag) = %v, want ErrNotFound", err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 {
		t.Errorf("List = %v, %v; want one image", list, err)
	}
}

func TestPullMultiPlatform(t *testing.T) {
	reg := newRegistry(t)
	arm := testImage(t, func(c *v1.ConfigFile) { c.Architecture = "arm64" }, layerTar(t, entry{name: "arch", body: "arm64"}))
	amd := testImage(t, nil, layerTar(t, entry{name: "arch", body: "amd64"}))
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	ref := reg.host + "/multi:latest"
	r, _ := name.ParseReference(ref)
	if err := remote.WriteIndex(r, idx, reg.auth()); err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()
	_, amdConfig := digestOf(t, amd)
	_, armConfig := digestOf(t, arm)

	tests := []struct {
		platform string
		want     string
		wantErr  error
	}{
		{"", amdConfig, nil},
		{"linux/amd64", amdConfig, nil},
		{"linux/arm64", armConfig, nil},
		{"linux/riscv64", "", ErrNotFound},
		{"bogus", "", ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.platform, func(t *testing.T) {
			s := newStore(t, reg)
			img, err := s.Pull(ctx(t), ref, PullOptions{Platform: tt.platform})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Pull = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if img.ID != tt.want {
				t.Errorf("ID = %s, want %s", img.ID, tt.want)
			}
			wantRD := reg.host + "/multi@" + idxDigest.String()
			if len(img.RepoDigests) != 1 || img.RepoDigests[0] != wantRD {
				t.Errorf("RepoDigests = %q, want [%s]", img.RepoDigests, wantRD)
			}
			if _, err := s.Get(wantRD); err != nil {
				t.Errorf("Get(index digest ref): %v", err)
			}
		})
	}
}

func TestPullCorruptBlobRejected(t *testing.T) {
	reg := newRegistry(t)
	img := simpleImage(t, "corrupt")
	ref := reg.push(t, "bad:v1", img)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()

	tests := []struct {
		name  string
		serve func(body []byte) []byte
	}{
		{"flipped byte", func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b }},
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg.tamper = func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+ld.String()) {
					return false
				}
				rc, err := layers[0].Compressed()
				if err != nil {
					t.Error(err)
					return false
				}
				b, _ := io.ReadAll(rc)
				w.Write(tt.serve(b))
				return true
			}
			t.Cleanup(func() { reg.tamper = nil })
			s := newStore(t, reg)
			_, err := s.Pull(ctx(t), ref, PullOptions{})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Pull = %v, want ErrCorrupt", err)
			}
			if s.hasBlob(ld, -1) {
				t.Error("corrupt layer was stored")
			}
			if left, _ := os.ReadDir(s.tmpDir()); len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}
			if list, _ := s.List(); len(list) != 0 {
				t.Errorf("image recorded despite corrupt layer: %v", list)
			}
		})
	}
}

func TestPullUnsupportedLayerLeavesNothing(t *testing.T) {
	reg := newRegistry(t)
	foreign := static.NewLayer([]byte("not really a tar"), types.DockerForeignLayer)
	img, err := mutate.Append(simpleImage(t, "foreign"), mutate.Addendum{
		Layer:     foreign,
		URLs:      []string{"http://127.0.0.1:1/foreign.tar.gz"},
		MediaType: types.DockerForeignLayer,
	})
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.push(t, "foreign:v1", img)
	s := newStore(t, reg)
	_, err = s.Pull(ctx(t), ref, PullOptions{})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), string(types.DockerForeignLayer)) {
		t.Fatalf("Pull = %v, want ErrUnsupported naming the media type", err)
	}
	if blobs, _ := os.ReadDir(s.blobDir()); len(blobs) != 0 {
		t.Errorf("blobs stored for an unsupported image: %v", blobs)
	}
}

func TestConcurrentPullsOfOneImage(t *testing.T) {
	reg := newRegistry(t)
	img := testImage(t, nil,
		layerTar(t, entry{name: "a", body: strings.Repeat("a", 100000)}),
		layerTar(t, entry{name: "b", body: strings.Repeat("b", 100000)}),
	)
	ref := reg.push(t, "conc:v1", img)
	_, config := digestOf(t, img)
	s := newStore(t, reg)

	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := s.Pull(ctx(t), ref, PullOptions{})
			if err == nil && got.ID != config {
				err = fmt.Errorf("got ID %s, want %s", got.ID, config)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("pull %d: %v", i, err)
		}
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || len(list[0].RepoTags) != 1 {
		t.Fatalf("List = %+v, %v; want one tagged image", list, err)
	}
	blobs, _ := os.ReadDir(s.blobDir())
	if len(blobs) != 4 { // manifest, config, two layers
		t.Errorf("%d blobs stored, want 4", len(blobs))
	}
	if left, _ := os.ReadDir(s.tmpDir()); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestPushThenPullBack(t *testing.T) {
	reg := newRegistry(t)
	src := simpleImage(t, "push")
	ref := reg.push(t, "orig:v1", src)
	a := newStore(t, reg)
	pulled, err := a.Pull(ctx(t), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dst := reg.host + "/copies/app:pushed"
	if err := a.Push(ctx(t), pulled.ID[:19], dst, PullOptions{}); err != nil {
		t.Fatalf("Push: %v", err)
	}
	b := newStore(t, reg)
	back, err := b.Pull(ctx(t), dst, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if back.Digest != pulled.Digest || back.ID != pulled.ID {
		t.Errorf("pulled back %s/%s, pushed %s/%s", back.ID, back.Digest, pulled.ID, pulled.Digest)
	}

	// The same image loaded from an archive has a different manifest
	// (recompressed layers) but the same ID, and pushes fine.
	if err := a.Push(ctx(t), "sha256:"+strings.Repeat("0", 64), dst, PullOptions{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Push(unknown) = %v, want ErrNotFound", err)
	}
	a2 := newStore(t, nil) // not logged in
	if _, err := a2.Load(ctx(t), writeDockerArchive(t, map[string]v1.Image{"local/app:v1": src})); err != nil {
		t.Fatal(err)
	}
	if err := a2.Push(ctx(t), "local/app:v1", dst, PullOptions{}); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Push without login = %v, want ErrUnauthorized", err)
	}
}

func TestSchemeGuard(t *testing.T) {
	ok := roundTripFunc(func(*http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Body: io.NopCloser(bytes.NewReader(nil))}, nil
	})
	tests := []struct {
		url      string
		insecure bool
		allowed  bool
	}{
		{"http://127.0.0.1:5000/v2/", false, true},
		{"http://localhost:5000/v2/", false, true},
		{"http://[::1]:5000/v2/", false, true},
		{"http://10.1.2.3:5000/v2/", false, false},
		{"http://192.168.1.2/v2/", false, false},
		{"http://registry.internal/v2/", false, false},
		{"http://registry.internal/v2/", true, true},
		{"https://10.1.2.3/v2/", false, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s insecure=%v", tt.url, tt.insecure), func(t *testing.T) {
			u, _ := url.Parse(tt.url)
			_, err := (&schemeGuard{insecure: tt.insecure, next: ok}).RoundTrip(&http.Request{URL: u})
			if (err == nil) != tt.allowed {
				t.Errorf("RoundTrip err = %v, want allowed=%v", err, tt.allowed)
			}
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestPullRejectsBadInput(t *testing.T) {
	s := newStore(t, nil)
	tests := []struct {
		ref  string
		opts PullOptions
		want error
	}{
		{"UPPER/case:tag", PullOptions{}, ErrInvalidArgument},
		{"127.0.0.1:1/app:v1", PullOptions{Platform: "linux"}, ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			if _, err := s.Pull(ctx(t), tt.ref, tt.opts); !errors.Is(err, tt.want) {
				t.Errorf("Pull = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestPullUsesDockerConfigAsFallback(t *testing.T) {
	reg := newRegistry(t)
	ref := reg.push(t, "fallback:v1", simpleImage(t, "fallback"))
	s := newStore(t, nil) // no Login: only the docker config has credentials
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.host, base64.StdEncoding.EncodeToString([]byte(testUser+":"+testPass)))
	if err := os.WriteFile(filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx(t), ref, PullOptions{}); err != nil {
		t.Fatalf("Pull with credentials in $DOCKER_CONFIG: %v", err)
	}
}

// TestPullReportsToTheCallersProgress sends a call's reports to the
// function in its options, not to the Store's.
func TestPullReportsToTheCallersProgress(t *testing.T) {
	reg := newRegistry(t)
	ref := reg.push(t, "team/progress:v1", simpleImage(t, "v1"))
	s := newStore(t, reg)
	s.progress = func(p Progress) { t.Errorf("store-wide progress got %+v", p) }
	var reports []Progress
	if _, err := s.Pull(ctx(t), ref, PullOptions{Progress: func(p Progress) { reports = append(reports, p) }}); err != nil {
		t.Fatal(err)
	}
	if len(reports) == 0 || reports[len(reports)-1].Ref != ref {
		t.Errorf("per-call reports = %+v", reports)
	}
}

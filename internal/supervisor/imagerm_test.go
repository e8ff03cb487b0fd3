package supervisor

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/image"
	"kiln.dev/kiln/internal/vm"
)

// TestRemoveImageGuardsCreation: rmi's policy reads the supervisor's own
// records, and a removal waits for a creation's last step, after which
// that creation finds its image gone rather than recording a VM of an
// image no longer stored.
func TestRemoveImageGuardsCreation(t *testing.T) {
	root := t.TempDir()
	store, err := image.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := name.NewTag("kiln-test/app:a")
	b, _ := name.NewTag("kiln-test/app:b")
	var archive bytes.Buffer
	if err := tarball.MultiWrite(map[name.Tag]v1.Image{a: img, b: img}, &archive); err != nil {
		t.Fatal(err)
	}
	loaded, err := store.LoadArchive(t.Context(), &archive, "app.tar")
	if err != nil {
		t.Fatal(err)
	}
	id := loaded[0].ID
	r, err := vm.New(root, vm.WithImages(store))
	if err != nil {
		t.Fatal(err)
	}
	s := New(r, nil, slog.New(slog.DiscardHandler))
	s.vms["0123456789abcdef"] = &managed{id: "0123456789abcdef", spec: vm.Spec{VMConfig: api.VMConfig{Name: "web"}, ImageID: id}}

	if res, err := s.RemoveImage("kiln-test/app:a", false); err != nil || res.Deleted != "" || len(res.Untagged) != 1 || res.Untagged[0] != a.Name() {
		t.Errorf("untagging a tag of an image that keeps another = %+v, %v", res, err)
	}
	if _, err := s.RemoveImage("kiln-test/app:b", false); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "web") {
		t.Errorf("removing an image a VM uses = %v, want a conflict naming web", err)
	}

	release, err := s.holdImage(id)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.RemoveImage("kiln-test/app:b", true)
		done <- err
	}()
	select {
	case err := <-done:
		t.Errorf("the removal (%v) did not wait for a creation's last step", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("forced removal: %v", err)
	}
	if _, err := s.holdImage(id); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("a creation after its image was removed = %v, want a conflict", err)
	}
	if rel, err := s.holdImage(""); err != nil {
		t.Errorf("a VM without an image: %v", err)
	} else {
		rel()
	}
}

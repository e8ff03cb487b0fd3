package supervisor

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"

	"kiln.dev/kiln/internal/errdefs"
)

// imageGuard orders image removals with VM creations, so that a removal
// never misses a VM being created from the image it removes. Create takes
// it only for its last step (checking that its image is still stored and
// entering the VM in s.vms), never across a pull or a build.
type imageGuard struct {
	mu sync.Mutex
}

// ImageRemoval is what RemoveImage did: the tags it removed and, when the
// image record went too, its ID.
type ImageRemoval struct {
	// Untagged are the fully qualified tags removed.
	Untagged []string
	// Deleted is the ID of the image removed; empty when only a tag went
	// and the image stays under its other tags.
	Deleted string
}

// RemoveImage removes ref (a tag, digest or ID) from the image store by
// kiln's one policy, docker's: removing a tag of an image that keeps
// another tag is always allowed and deletes nothing; otherwise the image
// is refused (errdefs.ErrConflict, naming the VMs) while a VM made from it
// exists, running or not, unless force. Which VMs use the image comes from
// the supervisor's own records, checked under the same guard Create's last
// step takes, so a VM being created from the image is never missed.
// Blobs and root filesystems stay until the store is pruned.
func (s *Supervisor) RemoveImage(ref string, force bool) (ImageRemoval, error) {
	store, err := s.rt.Images()
	if err != nil {
		return ImageRemoval{}, err
	}
	s.images.mu.Lock()
	defer s.images.mu.Unlock()
	img, err := store.Get(ref)
	if err != nil {
		return ImageRemoval{}, fmt.Errorf("removing image %s: %w", ref, err)
	}
	tag := tagOf(ref)
	untagOnly := tag != "" && len(img.RepoTags) > 1 && slices.Contains(img.RepoTags, tag)
	if !untagOnly && !force {
		if users := s.imageUsers(img.ID); len(users) > 0 {
			return ImageRemoval{}, fmt.Errorf("image %s (%s) is used by VM %s: remove the VM first, or use -f: %w",
				ref, shortID(img.ID), strings.Join(users, ", "), errdefs.ErrConflict)
		}
	}
	if err := store.Remove(ref); err != nil {
		return ImageRemoval{}, err
	}
	if _, err := store.Get(img.ID); errors.Is(err, errdefs.ErrNotFound) {
		return ImageRemoval{Untagged: img.RepoTags, Deleted: img.ID}, nil
	}
	return ImageRemoval{Untagged: []string{tag}}, nil
}

// imageUsers returns the names (or short IDs) of the supervised VMs made
// from the image with ID id, sorted.
func (s *Supervisor) imageUsers(id string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var users []string
	for vmID, m := range s.vms {
		// A VM's spec is set before it enters s.vms and never changes.
		if m.spec.ImageID != id {
			continue
		}
		n := m.spec.Name
		if n == "" {
			n = vmID[:min(12, len(vmID))]
		}
		users = append(users, n)
	}
	sort.Strings(users)
	return users
}

// holdImage is Create's last step's guard: it returns with the image guard
// held (release drops it) once the image with ID id is confirmed stored,
// or an error when a removal took the image after Create resolved it. A
// VM without an image takes no guard.
func (s *Supervisor) holdImage(id string) (release func(), err error) {
	if id == "" {
		return func() {}, nil
	}
	store, err := s.rt.Images()
	if err != nil {
		return nil, err
	}
	s.images.mu.Lock()
	if _, err := store.Get(id); err != nil {
		s.images.mu.Unlock()
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, fmt.Errorf("image %s was removed while the VM was being created: %w", shortID(id), errdefs.ErrConflict)
		}
		return nil, err
	}
	return s.images.mu.Unlock, nil
}

// tagOf returns the fully qualified tag ref names, or "" when ref names an
// image by ID or digest.
func tagOf(ref string) string {
	if strings.Contains(ref, "@") || strings.HasPrefix(ref, "sha256:") {
		return ""
	}
	t, err := name.NewTag(ref)
	if err != nil {
		return ""
	}
	return t.Name()
}

func shortID(id string) string {
	h := strings.TrimPrefix(id, "sha256:")
	return h[:min(12, len(h))]
}

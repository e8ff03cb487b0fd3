package daemon

import (
	"fmt"
	"net/http"
	"strings"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/image"
)

// Image endpoints: the seed runtime's Pull, Push, ImageExists and Login
// verbs, for programs that drive kiln through the client package. References
// travel in the body or the query, since they contain slashes and colons.

func (d *Daemon) imageRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/images", d.listImages)
	mux.HandleFunc("GET /v1/images/inspect", d.inspectImage)
	mux.HandleFunc("POST /v1/images/pull", d.pullImage)
	mux.HandleFunc("POST /v1/images/push", d.pushImage)
	mux.HandleFunc("DELETE /v1/images", d.removeImage)
	mux.HandleFunc("POST /v1/auth", d.login)
}

func imageToAPI(i *image.Image) api.Image {
	return api.Image{ID: i.ID, Digest: i.Digest, RepoTags: i.RepoTags, Size: i.Size, Created: i.Created}
}

func (d *Daemon) images() (*image.Store, error) {
	s, err := d.rt.Images()
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (d *Daemon) listImages(w http.ResponseWriter, r *http.Request) {
	s, err := d.images()
	if err != nil {
		d.fail(w, err)
		return
	}
	imgs, err := s.List()
	if err != nil {
		d.fail(w, err)
		return
	}
	out := []api.Image{}
	for _, i := range imgs {
		out = append(out, imageToAPI(i))
	}
	writeJSON(w, http.StatusOK, out)
}

func refParam(r *http.Request) (string, error) {
	ref := strings.TrimSpace(r.URL.Query().Get("ref"))
	if ref == "" {
		return "", fmt.Errorf("no image reference given (?ref=): %w", errdefs.ErrInvalidArgument)
	}
	return ref, nil
}

func (d *Daemon) inspectImage(w http.ResponseWriter, r *http.Request) {
	ref, err := refParam(r)
	var s *image.Store
	if err == nil {
		s, err = d.images()
	}
	if err != nil {
		d.fail(w, err)
		return
	}
	img, err := s.Get(ref)
	if err != nil {
		d.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, imageToAPI(img))
}

func (d *Daemon) pullImage(w http.ResponseWriter, r *http.Request) {
	var req api.PullRequest
	if err := decode(w, r, &req); err != nil {
		d.fail(w, err)
		return
	}
	s, err := d.images()
	if err != nil {
		d.fail(w, err)
		return
	}
	img, err := s.Pull(r.Context(), req.Ref, image.PullOptions{Insecure: req.Insecure})
	if err != nil {
		d.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, imageToAPI(img))
}

func (d *Daemon) pushImage(w http.ResponseWriter, r *http.Request) {
	var req api.PushRequest
	if err := decode(w, r, &req); err != nil {
		d.fail(w, err)
		return
	}
	s, err := d.images()
	if err != nil {
		d.fail(w, err)
		return
	}
	if err := s.Push(r.Context(), req.Src, req.Dst, image.PullOptions{Insecure: req.Insecure}); err != nil {
		d.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// removeImage removes an image (by tag, digest or ID), refusing while a VM
// uses it unless force.
func (d *Daemon) removeImage(w http.ResponseWriter, r *http.Request) {
	ref, err := refParam(r)
	var s *image.Store
	if err == nil {
		s, err = d.images()
	}
	if err != nil {
		d.fail(w, err)
		return
	}
	img, err := s.Get(ref)
	if err != nil {
		d.fail(w, err)
		return
	}
	if r.URL.Query().Get("force") != "1" {
		users, err := d.rt.ImageUsers(img.ID)
		if err != nil {
			d.fail(w, err)
			return
		}
		if len(users) > 0 {
			d.fail(w, fmt.Errorf("image %s is used by VM %s: remove the VM first, or force: %w", ref, strings.Join(users, ", "), errdefs.ErrConflict))
			return
		}
	}
	if err := s.Remove(ref); err != nil {
		d.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (d *Daemon) login(w http.ResponseWriter, r *http.Request) {
	var req api.LoginRequest
	if err := decode(w, r, &req); err != nil {
		d.fail(w, err)
		return
	}
	s, err := d.images()
	if err != nil {
		d.fail(w, err)
		return
	}
	if err := s.Login(req.Registry, req.Username, req.Password); err != nil {
		d.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

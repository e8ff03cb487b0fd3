package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/image"
)

// Image endpoints. The daemon is the only owner of the image store: the
// CLI pulls, pushes, loads, lists, inspects, removes and prunes through
// these. References travel in the body or the query, since they contain
// slashes and colons. Pull and push stream their progress as ndjson.

func (d *Daemon) imageRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/images", d.handle(d.listImages))
	mux.HandleFunc("GET /v1/images/inspect", d.handle(d.inspectImage))
	mux.HandleFunc("POST /v1/images/pull", d.handle(d.pullImage))
	mux.HandleFunc("POST /v1/images/push", d.handle(d.pushImage))
	mux.HandleFunc("POST /v1/images/load", d.handle(d.loadImages))
	mux.HandleFunc("POST /v1/images/prune", d.handle(d.pruneImages))
	mux.HandleFunc("DELETE /v1/images", d.handle(d.removeImage))
	mux.HandleFunc("POST /v1/images/tag", d.handle(d.tagImage))
	mux.HandleFunc("POST /v1/auth", d.handle(d.login))
	mux.HandleFunc("DELETE /v1/auth", d.handle(d.logout))
}

// imagesToAPI answers a list as an array, never null.
func imagesToAPI(imgs []*image.Image) []api.Image {
	out := []api.Image{}
	for _, i := range imgs {
		out = append(out, *i)
	}
	return out
}

func (d *Daemon) listImages(w http.ResponseWriter, r *http.Request) error {
	s, err := d.rt.Images()
	if err != nil {
		return err
	}
	imgs, err := s.List()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, imagesToAPI(imgs))
	return nil
}

func refParam(r *http.Request) (string, error) {
	ref := strings.TrimSpace(r.URL.Query().Get("ref"))
	if ref == "" {
		return "", fmt.Errorf("no image reference given (?ref=): %w", errdefs.ErrInvalidArgument)
	}
	return ref, nil
}

func (d *Daemon) inspectImage(w http.ResponseWriter, r *http.Request) error {
	ref, err := refParam(r)
	var s *image.Store
	if err == nil {
		s, err = d.rt.Images()
	}
	if err != nil {
		return err
	}
	img, err := s.Get(ref)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, *img)
	return nil
}

// progressStream answers a pull or a push. Nothing is written until the
// first progress report, so an error met before any transfer (a malformed
// reference, refused credentials, an unknown image) is a plain error answer
// with its status, as on every other endpoint; after that the answer is an
// ndjson stream of api.JSONMessage that ends with the result, or with the
// error and the status it would have had.
type progressStream struct {
	d *Daemon
	w http.ResponseWriter

	mu sync.Mutex // guards s and got; the store reports from its transfer goroutines
	s  *streamer  // nil until the first message
	// got are the bytes of each blob transferred, for the metrics.
	got map[string]int64
}

// transferred is the bytes of the blobs a pull transferred.
func (p *progressStream) transferred() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
	for _, b := range p.got {
		n += b
	}
	return n
}

func (p *progressStream) send(m api.JSONMessage) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.s == nil {
		p.s = newStreamer(p.w)
	}
	_ = p.s.send(m, true) // a client gone cancels the request's context
}

// report turns one of the store's progress reports into a message.
func (p *progressStream) report(r image.Progress) {
	m := api.JSONMessage{ProgressDetail: &api.ProgressDetail{Current: r.Complete, Total: r.Total}}
	complete := r.Total > 0 && r.Complete >= r.Total
	switch {
	case r.Digest == "" && complete:
		m.Status = api.StatusPushed
	case r.Digest == "":
		m.Status = api.StatusPushing
	case r.Cached:
		m.Status = api.StatusAlreadyExists
	case complete:
		m.Status = api.StatusDownloadComplete
	default:
		m.Status = api.StatusDownloading
	}
	if r.Digest != "" {
		m.ID = shortDigest(r.Digest)
		if complete && !r.Cached {
			p.mu.Lock()
			if p.got == nil {
				p.got = map[string]int64{}
			}
			p.got[r.Digest] = r.Total
			p.mu.Unlock()
		}
	}
	p.send(m)
}

// fail ends the answer with err: a plain error answer when nothing was
// streamed yet, an error message otherwise.
func (p *progressStream) fail(err error) {
	p.mu.Lock()
	started := p.s != nil
	p.mu.Unlock()
	if !started {
		p.d.fail(p.w, err)
		return
	}
	code := statusOf(err)
	if code == http.StatusInternalServerError {
		p.d.log.Warn("request failed", "err", err)
	}
	p.send(api.JSONMessage{Error: err.Error(), ErrorDetail: &api.ErrorDetail{Code: code, Message: err.Error()}})
}

// shortDigest is "sha256:" and the first 12 hex digits of a digest.
func shortDigest(d string) string {
	algo, h, ok := strings.Cut(d, ":")
	if !ok {
		return d
	}
	return algo + ":" + h[:min(12, len(h))]
}

func (d *Daemon) pullImage(w http.ResponseWriter, r *http.Request) error {
	var req api.PullRequest
	err := decode(w, r, &req)
	opts := image.PullOptions{Insecure: req.Insecure, Platform: req.Platform}
	if err == nil && strings.TrimSpace(req.Ref) == "" {
		err = fmt.Errorf("no image reference given: %w", errdefs.ErrInvalidArgument)
	}
	if err == nil {
		err = opts.Validate()
	}
	var s *image.Store
	if err == nil {
		s, err = d.rt.Images()
	}
	if err != nil {
		return err
	}
	p := &progressStream{d: d, w: w}
	opts.Progress = p.report
	img, err := s.Pull(r.Context(), req.Ref, opts)
	if err != nil {
		d.metrics.Pulled("error", p.transferred())
		p.fail(err)
		return nil
	}
	d.metrics.Pulled("ok", p.transferred())
	aux, err := json.Marshal(*img)
	if err != nil {
		p.fail(err)
		return nil
	}
	p.send(api.JSONMessage{Aux: aux})
	return nil
}

func (d *Daemon) pushImage(w http.ResponseWriter, r *http.Request) error {
	var req api.PushRequest
	err := decode(w, r, &req)
	var s *image.Store
	if err == nil {
		s, err = d.rt.Images()
	}
	if err != nil {
		return err
	}
	p := &progressStream{d: d, w: w}
	if err := s.Push(r.Context(), req.Src, req.Dst, image.PullOptions{Insecure: req.Insecure, Progress: p.report}); err != nil {
		p.fail(err)
		return nil
	}
	p.send(api.JSONMessage{Status: api.StatusPushed, ID: ""})
	return nil
}

// maxLabel bounds the name a load request gives its archive.
const maxLabel = 1024

// loadImages loads the images of the docker-archive or OCI archive that is
// the request body, and answers the images loaded. ?name= names the
// archive in messages only: the daemon opens no path a client names.
func (d *Daemon) loadImages(w http.ResponseWriter, r *http.Request) error {
	label := r.URL.Query().Get("name")
	if label == "" {
		label = "archive"
	}
	if len(label) > maxLabel || strings.ContainsAny(label, "\x00\n") {
		return fmt.Errorf("archive name over %d bytes or with a newline: %w", maxLabel, errdefs.ErrInvalidArgument)
	}
	s, err := d.rt.Images()
	if err != nil {
		return err
	}
	imgs, err := s.LoadArchive(r.Context(), r.Body, label)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, imagesToAPI(imgs))
	return nil
}

func (d *Daemon) pruneImages(w http.ResponseWriter, r *http.Request) error {
	s, err := d.rt.Images()
	if err != nil {
		return err
	}
	freed, err := s.Prune()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.PruneResponse{SpaceReclaimed: freed})
	return nil
}

// removeImage removes an image (by tag, digest or ID) by the supervisor's
// one policy (see supervisor.Supervisor.RemoveImage) and answers what it
// untagged and deleted.
func (d *Daemon) removeImage(w http.ResponseWriter, r *http.Request) error {
	ref, err := refParam(r)
	if err != nil {
		return err
	}
	res, err := d.sup.RemoveImage(ref, r.URL.Query().Get("force") == "1")
	if err != nil {
		return err
	}
	out := []api.ImageDeleted{}
	for _, t := range res.Untagged {
		out = append(out, api.ImageDeleted{Untagged: t})
	}
	if res.Deleted != "" {
		out = append(out, api.ImageDeleted{Deleted: res.Deleted})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) tagImage(w http.ResponseWriter, r *http.Request) error {
	var req api.TagRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Src == "" || req.Dst == "" {
		return errdefs.Invalid("tag needs an image (src) and a tag (dst)")
	}
	s, err := d.rt.Images()
	if err != nil {
		return err
	}
	img, err := s.Tag(req.Src, req.Dst)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, imagesToAPI([]*image.Image{img})[0])
	return nil
}

func (d *Daemon) login(w http.ResponseWriter, r *http.Request) error {
	var req api.LoginRequest
	err := decode(w, r, &req)
	var s *image.Store
	if err == nil {
		s, err = d.rt.Images()
	}
	if err != nil {
		return err
	}
	if err := s.Login(req.Registry, req.Username, req.Password); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// logout forgets the credentials of ?registry=.
func (d *Daemon) logout(w http.ResponseWriter, r *http.Request) error {
	reg := strings.TrimSpace(r.URL.Query().Get("registry"))
	var s *image.Store
	var err error
	if reg == "" {
		err = fmt.Errorf("no registry given (?registry=): %w", errdefs.ErrInvalidArgument)
	} else {
		s, err = d.rt.Images()
	}
	if err != nil {
		return err
	}
	if err := s.Logout(reg); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

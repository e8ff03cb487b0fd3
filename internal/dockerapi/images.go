package dockerapi

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
)

func (s *Server) imageRoutes(mux *http.ServeMux) {
	// Image names hold slashes, so the routes past /images/ are told apart
	// here: NAME/json, NAME/push, NAME/tag.
	mux.HandleFunc("GET /images/{rest...}", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		rest := r.PathValue("rest")
		switch {
		case rest == "json":
			return s.listImages(w, r)
		case strings.HasSuffix(rest, "/json"):
			return s.inspectImage(w, r, strings.TrimSuffix(rest, "/json"))
		}
		return fmt.Errorf("GET /images/%s is not served by kiln's Docker API: %w", rest, errNotImplemented)
	}))
	mux.HandleFunc("POST /images/{rest...}", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		rest := r.PathValue("rest")
		switch {
		case rest == "create":
			return s.pullImage(w, r)
		case rest == "prune":
			n, err := s.kiln.PruneImages(r.Context())
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, image.PruneReport{ImagesDeleted: []image.DeleteResponse{}, SpaceReclaimed: uint64(n)})
			return nil
		case strings.HasSuffix(rest, "/push"):
			return s.pushImage(w, r, strings.TrimSuffix(rest, "/push"))
		case strings.HasSuffix(rest, "/tag"):
			return s.tagImage(w, r, strings.TrimSuffix(rest, "/tag"))
		}
		return fmt.Errorf("POST /images/%s is not served by kiln's Docker API (kiln has no image build yet): %w", rest, errNotImplemented)
	}))
	mux.HandleFunc("DELETE /images/{name...}", s.handle(s.removeImage))
	mux.HandleFunc("POST /auth", s.handle(s.login))
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) error {
	imgs, err := s.kiln.Images(r.Context())
	if err != nil {
		return err
	}
	out := []image.Summary{}
	for _, img := range imgs {
		out = append(out, image.Summary{
			ID: img.ID, ParentID: "", RepoTags: orEmpty(img.RepoTags), RepoDigests: orEmpty(img.RepoDigests),
			Created: img.Created.Unix(), Size: img.Size, SharedSize: -1, Containers: -1,
			Labels: labelsOrEmpty(img.Config.Labels),
		})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (s *Server) inspectImage(w http.ResponseWriter, r *http.Request, name string) error {
	img, err := s.kiln.InspectImage(r.Context(), name)
	if err != nil {
		return noSuchImage(name, err)
	}
	writeJSON(w, http.StatusOK, toImageInspect(img))
	return nil
}

func noSuchImage(ref string, err error) error {
	if strings.Contains(err.Error(), "no such image") || statusOf(err) == http.StatusNotFound {
		return fmt.Errorf("No such image: %s: %w", ref, err)
	}
	return err
}

func toImageInspect(img api.Image) image.InspectResponse {
	c := img.Config
	cfg := &dockerspec.DockerOCIImageConfig{ImageConfig: ocispec.ImageConfig{
		User: c.User, Env: c.Env, Entrypoint: c.Entrypoint, Cmd: c.Cmd, WorkingDir: c.WorkingDir,
		Labels: c.Labels, StopSignal: c.StopSignal, ExposedPorts: map[string]struct{}{}, Volumes: map[string]struct{}{},
	}}
	for _, p := range c.ExposedPorts {
		cfg.ExposedPorts[p] = struct{}{}
	}
	for _, v := range c.Volumes {
		cfg.Volumes[v] = struct{}{}
	}
	if h := c.Healthcheck; h != nil {
		cfg.Healthcheck = &dockerspec.HealthcheckConfig{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod, Retries: h.Retries}
	}
	return image.InspectResponse{
		ID: img.ID, RepoTags: orEmpty(img.RepoTags), RepoDigests: orEmpty(img.RepoDigests),
		Created: dockerTime(img.Created), Config: cfg, Architecture: img.Architecture, Os: img.OS,
		Size: img.Size, RootFS: image.RootFS{Type: "layers"},
	}
}

// pullImage is docker's POST /images/create?fromImage=NAME&tag=TAG: kiln's
// pull, its progress messages passed on (they are docker's shape), ended
// with docker's digest and status lines.
func (s *Server) pullImage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if q.Get("fromSrc") != "" {
		return fmt.Errorf("importing an image (fromSrc) is not supported: %w", errNotImplemented)
	}
	ref := q.Get("fromImage")
	if ref == "" {
		return refuse("no image given: fromImage is required")
	}
	if tag := q.Get("tag"); tag != "" {
		if strings.HasPrefix(tag, "sha256:") {
			ref += "@" + tag
		} else {
			ref += ":" + tag
		}
	}
	var notes []string
	if hasCredentials(r.Header.Get("X-Registry-Auth")) {
		notes = append(notes, "X-Registry-Auth ignored: kiln pulls with the credentials stored by docker login or kiln login")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flush := func() {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
	for _, n := range notes {
		_ = enc.Encode(api.JSONMessage{Status: n})
	}
	_ = enc.Encode(api.JSONMessage{Status: "Pulling from " + repoOf(ref), ID: tagOf(ref)})
	flush()
	img, err := s.kiln.PullImage(r.Context(), ref, client.PullOptions{Platform: q.Get("platform"), Progress: func(m api.JSONMessage) {
		_ = enc.Encode(m)
		flush()
	}})
	if err != nil {
		_ = enc.Encode(api.JSONMessage{Error: err.Error(), ErrorDetail: &api.ErrorDetail{Code: statusOf(err), Message: err.Error()}})
		return nil
	}
	if img.Digest != "" {
		_ = enc.Encode(api.JSONMessage{Status: "Digest: " + img.Digest})
	}
	_ = enc.Encode(api.JSONMessage{Status: "Status: Downloaded newer image for " + ref})
	return nil
}

// hasCredentials tells whether docker's X-Registry-Auth header carries a
// user name or token.
func hasCredentials(h string) bool {
	if h == "" {
		return false
	}
	b, err := base64.URLEncoding.DecodeString(h)
	if err != nil {
		b, _ = base64.StdEncoding.DecodeString(h)
	}
	var a registry.AuthConfig
	if json.Unmarshal(b, &a) != nil {
		return false
	}
	return a.Username != "" || a.IdentityToken != "" || a.RegistryToken != ""
}

func repoOf(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		return ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i]
	}
	return ref
}

func tagOf(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		return ref[i+1:]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[i+1:]
	}
	return "latest"
}

func (s *Server) pushImage(w http.ResponseWriter, r *http.Request, name string) error {
	ref := name
	if tag := r.URL.Query().Get("tag"); tag != "" {
		ref += ":" + tag
	}
	if _, err := s.kiln.InspectImage(r.Context(), ref); err != nil {
		return noSuchImage(ref, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	_ = enc.Encode(api.JSONMessage{Status: "The push refers to repository [" + repoOf(ref) + "]"})
	err := s.kiln.PushImage(r.Context(), ref, ref, client.PushOptions{Progress: func(m api.JSONMessage) {
		_ = enc.Encode(m)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}})
	if err != nil {
		_ = enc.Encode(api.JSONMessage{Error: err.Error(), ErrorDetail: &api.ErrorDetail{Code: statusOf(err), Message: err.Error()}})
		return nil
	}
	_ = enc.Encode(api.JSONMessage{Status: tagOf(ref) + ": pushed"})
	return nil
}

func (s *Server) removeImage(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	out, err := s.kiln.RemoveImages(r.Context(), name, boolParam(r, "force"))
	if err != nil {
		return noSuchImage(name, err)
	}
	resp := []image.DeleteResponse{}
	for _, d := range out {
		resp = append(resp, image.DeleteResponse{Untagged: d.Untagged, Deleted: d.Deleted})
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// tagImage is docker tag: POST /images/NAME/tag?repo=REPO&tag=TAG.
func (s *Server) tagImage(w http.ResponseWriter, r *http.Request, name string) error {
	repo, tag := r.URL.Query().Get("repo"), r.URL.Query().Get("tag")
	if repo == "" {
		return refuse("no repository given: repo is required")
	}
	dst := repo
	if tag != "" {
		dst += ":" + tag
	}
	if _, err := s.kiln.TagImage(r.Context(), name, dst); err != nil {
		return noSuchImage(name, err)
	}
	w.WriteHeader(http.StatusCreated)
	return nil
}

// login is docker login: kiln stores the credentials for later pulls and
// pushes.
func (s *Server) login(w http.ResponseWriter, r *http.Request) error {
	var a registry.AuthConfig
	if err := decodeBody(w, r, &a); err != nil {
		return err
	}
	if a.ServerAddress == "" {
		return refuse("no registry given: serveraddress is required")
	}
	if err := s.kiln.Login(r.Context(), a.ServerAddress, a.Username, a.Password); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, registry.AuthenticateOKBody{Status: "Login Succeeded"})
	return nil
}

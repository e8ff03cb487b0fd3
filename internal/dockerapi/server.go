// Package dockerapi serves the Docker Engine API (version 1.41, what
// docker 20.10's CLI and docker-compose 1.29 speak; newer clients
// negotiate down to it) in front of kiln's own API: every request becomes
// calls of kiln's Go client against the daemon's kiln socket, so each
// lifecycle step has one implementation, the daemon's. The package
// translates shapes and nothing else: docker's JSON in, kiln's api types
// through the client, docker's JSON out.
//
// What it holds itself is what docker's API has and kiln's does not: exec
// instances between their create and their start (docker makes and
// starts an exec in two requests), bounded in number.
package dockerapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
)

// The API versions served: requests under /v1.N/ with N above MaxVersion
// are refused as docker's daemon refuses them; those without a version
// get MaxVersion.
const (
	MaxVersion = "1.41"
	MinVersion = "1.24"
)

// Server is the Docker Engine API in front of one kiln daemon.
type Server struct {
	kiln *client.Client
	log  *slog.Logger
	// info describes the daemon for /version and /info.
	info Info
	// execs are exec instances, created and not yet gone.
	execs *execTable
}

// Info is what the Docker API says of the daemon behind it.
type Info struct {
	// Version is kiln's version, Commit its source revision, GoVersion the
	// toolchain's.
	Version, Commit, GoVersion string
	// Root is the kiln root; Hostname the host's name.
	Root, Hostname string
}

// New returns the Docker API of the kiln daemon that kiln reaches.
func New(kiln *client.Client, info Info, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{kiln: kiln, log: log, info: info, execs: newExecTable()}
}

var versionPrefix = regexp.MustCompile(`^/v([0-9]+)\.([0-9]+)(/.*)$`)

// Handler serves the API: paths with or without a /v1.N prefix.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.systemRoutes(mux)
	s.containerRoutes(mux)
	s.execRoutes(mux)
	s.imageRoutes(mux)
	s.volumeRoutes(mux)
	s.networkRoutes(mux)
	s.eventRoutes(mux)
	// Plugins: kiln has none. docker inspect asks for one by the name it
	// is given after containers, images, networks and volumes.
	mux.HandleFunc("GET /plugins", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, []struct{}{}) })
	mux.HandleFunc("GET /plugins/{name}/json", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("plugin %q not found", r.PathValue("name")))
	})
	// What docker's daemon has and this does not: 404, as docker answers
	// routes it does not know, which clients take for "no such thing".
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("%s %s is not served by kiln's Docker API (see docs/docker-compat.md for what is)", r.Method, r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m := versionPrefix.FindStringSubmatch(r.URL.Path); m != nil {
			v := m[1] + "." + m[2]
			if compareVersions(v, MaxVersion) > 0 {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("client version %s is too new. Maximum supported API version is %s", v, MaxVersion))
				return
			}
			if compareVersions(v, MinVersion) < 0 {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("client version %s is too old. Minimum supported API version is %s, please upgrade your client to a newer version", v, MinVersion))
				return
			}
			r2 := *r
			u := *r.URL
			u.Path = m[3]
			u.RawPath = ""
			r2.URL = &u
			r = &r2
		}
		w.Header().Set("Api-Version", MaxVersion)
		w.Header().Set("Ostype", "linux")
		w.Header().Set("Server", "kiln/"+s.info.Version+" (linux)")
		mux.ServeHTTP(w, r)
	})
}

// compareVersions compares API versions "1.41": -1, 0 or 1.
func compareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(pa), len(pb)); i++ {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		switch {
		case x < y:
			return -1
		case x > y:
			return 1
		}
	}
	return 0
}

// errorBody is docker's error shape.
type errorBody struct {
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Message: msg})
}

// statusOf is the status docker's API answers err with: kiln's answer's
// own status where it came from the daemon, else from kiln's sentinels.
func statusOf(err error) int {
	var ce *client.Error
	if errors.As(err, &ce) && ce.Status >= 400 {
		return ce.Status
	}
	var se statusError
	if errors.As(err, &se) {
		return se.code
	}
	switch {
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, errdefs.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errdefs.ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, errNotImplemented):
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}

// statusError is an error with docker's status for it.
type statusError struct {
	code int
	msg  string
}

func (e statusError) Error() string { return e.msg }

// errNotImplemented marks what kiln's Docker API refuses because kiln has
// no such thing (yet); docker's clients show the message.
var errNotImplemented = errors.New("not implemented")

// refuse is an error for a request kiln will not carry out because doing
// so would differ from docker's meaning: 400 with the reason.
func refuse(format string, a ...any) error {
	return errdefs.Invalid(fmt.Sprintf(format, a...))
}

type handler func(w http.ResponseWriter, r *http.Request) error

// handle adapts an endpoint: an error returned before the answer began
// becomes docker's error shape with its status.
func (s *Server) handle(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			code := statusOf(err)
			if code == http.StatusInternalServerError {
				s.log.Warn("docker API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeError(w, code, err.Error())
		}
	}
}

// decodeBody reads a JSON body, bounded; an empty body leaves v as it is.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	const maxBody = 1 << 20
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := dec.Decode(v); err != nil {
		if err.Error() == "EOF" {
			return nil
		}
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return refuse("request body is over %d bytes", maxBody)
		}
		return refuse("malformed JSON in request body: %v", err)
	}
	return nil
}

// boolParam reads a docker boolean query parameter: 1, true, True.
func boolParam(r *http.Request, name string) bool {
	v := strings.ToLower(r.URL.Query().Get(name))
	return v == "1" || v == "true"
}

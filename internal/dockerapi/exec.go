package dockerapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/docker/docker/api/types/common"
	"github.com/docker/docker/api/types/container"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
)

// Bounds of the exec table: instances made and not started, or ended,
// are dropped after execKeep; at most maxExecs exist at once.
const (
	maxExecs = 1024
	execKeep = 10 * time.Minute
)

// execInst is one of docker's exec instances: made by create, run by
// start, asked about by inspect.
type execInst struct {
	id, vm string
	cfg    api.ExecConfig
	made   time.Time

	mu       sync.Mutex
	started  bool
	running  bool
	ended    time.Time
	exitCode int
	stream   *client.ExecStream
}

type execTable struct {
	mu sync.Mutex
	m  map[string]*execInst
}

func newExecTable() *execTable { return &execTable{m: map[string]*execInst{}} }

// add stores e, dropping instances that ended or were never started
// long enough ago; it refuses when the table is full.
func (t *execTable) add(e *execInst) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	for id, x := range t.m {
		x.mu.Lock()
		stale := !x.ended.IsZero() && now.Sub(x.ended) > execKeep || !x.started && now.Sub(x.made) > execKeep
		x.mu.Unlock()
		if stale {
			delete(t.m, id)
		}
	}
	if len(t.m) >= maxExecs {
		return fmt.Errorf("too many exec instances (%d) not yet started or recently ended: %w", maxExecs, errdefs.ErrUnavailable)
	}
	t.m[e.id] = e
	return nil
}

func (t *execTable) get(id string) (*execInst, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[id]
	if !ok {
		return nil, fmt.Errorf("No such exec instance: %s: %w", id, errdefs.ErrNotFound)
	}
	return e, nil
}

func (s *Server) execRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /containers/{id}/exec", s.handle(s.createExec))
	mux.HandleFunc("POST /exec/{id}/start", s.handle(s.startExec))
	mux.HandleFunc("POST /exec/{id}/resize", s.handle(s.resizeExec))
	mux.HandleFunc("GET /exec/{id}/json", s.handle(s.inspectExec))
}

func (s *Server) createExec(w http.ResponseWriter, r *http.Request) error {
	var o container.ExecOptions
	if err := decodeBody(w, r, &o); err != nil {
		return err
	}
	if len(o.Cmd) == 0 {
		return refuse("no command given: Cmd is required")
	}
	if o.Privileged {
		return refuse("Privileged exec is refused: a command in a VM runs as its user in the guest's own kernel")
	}
	ref := r.PathValue("id")
	v, err := s.kiln.Inspect(r.Context(), ref)
	if err != nil {
		return noSuchContainer(ref, err)
	}
	if !v.State.Running {
		return fmt.Errorf("container %s is not running: %w", v.ID, errdefs.ErrConflict)
	}
	if v.State.Paused {
		return fmt.Errorf("container %s is paused, unpause the container before exec: %w", v.ID, errdefs.ErrConflict)
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	e := &execInst{id: hex.EncodeToString(b), vm: v.ID, made: time.Now(), cfg: api.ExecConfig{
		Cmd: o.Cmd, Env: o.Env, WorkingDir: o.WorkingDir, User: o.User, Tty: o.Tty, Stdin: o.AttachStdin,
	}}
	if o.ConsoleSize != nil {
		e.cfg.Rows, e.cfg.Cols = uint16(o.ConsoleSize[0]), uint16(o.ConsoleSize[1])
	}
	if err := s.execs.add(e); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, common.IDResponse{ID: e.id})
	return nil
}

func (s *Server) startExec(w http.ResponseWriter, r *http.Request) error {
	e, err := s.execs.get(r.PathValue("id"))
	if err != nil {
		return err
	}
	var o container.ExecStartOptions
	if err := decodeBody(w, r, &o); err != nil {
		return err
	}
	e.mu.Lock()
	if e.started {
		e.mu.Unlock()
		return fmt.Errorf("exec %s has already run: %w", e.id, errdefs.ErrConflict)
	}
	e.started = true
	cfg := e.cfg
	if o.ConsoleSize != nil {
		cfg.Rows, cfg.Cols = uint16(o.ConsoleSize[0]), uint16(o.ConsoleSize[1])
	}
	if o.Detach {
		cfg.Stdin = false
	}
	e.mu.Unlock()
	// The command runs on after this request when detached, so not in its
	// context.
	st, err := s.kiln.Exec(context.Background(), e.vm, cfg)
	if err != nil {
		e.finish(-1)
		return err
	}
	e.mu.Lock()
	e.running, e.stream = true, st
	e.mu.Unlock()
	if o.Detach {
		go func() {
			x, _ := st.Stream(nil, io.Discard, io.Discard)
			st.Close()
			e.finish(x.ExitCode)
		}()
		w.WriteHeader(http.StatusOK)
		return nil
	}
	conn, err := hijack(w, r, !cfg.Tty)
	if err != nil {
		st.Close()
		e.finish(-1)
		return err
	}
	defer conn.Close()
	var stdout, stderr io.Writer = conn, conn
	if !cfg.Tty {
		mw := &muxWriter{w: conn}
		stdout, stderr = streamWriter{mw, streamStdout}, streamWriter{mw, streamStderr}
	}
	var stdin io.Reader
	if cfg.Stdin {
		stdin = conn
	}
	x, err := st.Stream(stdin, stdout, stderr)
	st.Close()
	if err != nil {
		x.ExitCode = 126
		fmt.Fprintf(stderr, "exec in %s: %v\n", e.vm[:12], err)
	} else if x.Error != "" {
		fmt.Fprintf(stderr, "%s\n", x.Error)
	}
	e.finish(x.ExitCode)
	_ = conn.CloseWrite()
	return nil
}

func (e *execInst) finish(code int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.running, e.exitCode, e.ended, e.stream = false, code, time.Now(), nil
}

func (s *Server) resizeExec(w http.ResponseWriter, r *http.Request) error {
	e, err := s.execs.get(r.PathValue("id"))
	if err != nil {
		return err
	}
	h, errH := strconv.ParseUint(r.URL.Query().Get("h"), 10, 16)
	wd, errW := strconv.ParseUint(r.URL.Query().Get("w"), 10, 16)
	if errH != nil || errW != nil {
		return refuse("invalid size h=%q w=%q: want numbers of rows and columns", r.URL.Query().Get("h"), r.URL.Query().Get("w"))
	}
	e.mu.Lock()
	st := e.stream
	if st == nil {
		// Not started yet: the size it starts with.
		e.cfg.Rows, e.cfg.Cols = uint16(h), uint16(wd)
	}
	e.mu.Unlock()
	if st != nil {
		_ = st.Resize(uint16(h), uint16(wd))
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) inspectExec(w http.ResponseWriter, r *http.Request) error {
	e, err := s.execs.get(r.PathValue("id"))
	if err != nil {
		return err
	}
	e.mu.Lock()
	out := struct {
		container.ExecInspect
		OpenStdin, OpenStdout, OpenStderr bool
		ProcessConfig                     map[string]any
	}{
		ExecInspect: container.ExecInspect{ExecID: e.id, ContainerID: e.vm, Running: e.running, ExitCode: e.exitCode},
		OpenStdin:   e.cfg.Stdin, OpenStdout: true, OpenStderr: true,
		ProcessConfig: map[string]any{"tty": e.cfg.Tty, "entrypoint": e.cfg.Cmd[0], "arguments": e.cfg.Cmd[1:], "user": e.cfg.User},
	}
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
	return nil
}

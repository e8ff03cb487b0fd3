package daemon

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/buildinfo"
	"kiln.dev/kiln/internal/cgroup"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/metrics"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/supervisor"
	"kiln.dev/kiln/internal/vm"
)

// maxBody bounds request bodies; a VM config is a few KiB.
const maxBody = 1 << 20

func (d *Daemon) routes() http.Handler {
	if d.metrics == nil { // a daemon made by a test, without Run
		d.metrics = metrics.New(nil)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /v1/info", d.handle(d.info))
	mux.HandleFunc("POST /v1/vms", d.handle(d.create))
	mux.HandleFunc("GET /v1/vms", d.handle(d.list))
	mux.HandleFunc("GET /v1/vms/{ref}", d.handle(d.inspect))
	mux.HandleFunc("POST /v1/vms/{ref}/start", d.handle(d.start))
	mux.HandleFunc("POST /v1/vms/{ref}/stop", d.handle(d.stop))
	mux.HandleFunc("POST /v1/vms/{ref}/restart", d.handle(d.restart))
	mux.HandleFunc("POST /v1/vms/{ref}/kill", d.handle(d.kill))
	mux.HandleFunc("POST /v1/vms/{ref}/rename", d.handle(d.rename))
	mux.HandleFunc("POST /v1/vms/{ref}/update", d.handle(d.update))
	mux.HandleFunc("POST /v1/vms/{ref}/pause", d.handle(func(w http.ResponseWriter, r *http.Request) error {
		return noContent(w, d.sup.Pause(r.Context(), r.PathValue("ref")))
	}))
	mux.HandleFunc("POST /v1/vms/{ref}/unpause", d.handle(func(w http.ResponseWriter, r *http.Request) error {
		return noContent(w, d.sup.Unpause(r.Context(), r.PathValue("ref")))
	}))
	mux.HandleFunc("POST /v1/vms/{ref}/wait", d.handle(d.wait))
	mux.HandleFunc("DELETE /v1/vms/{ref}", d.handle(d.remove))
	mux.HandleFunc("GET /v1/vms/{ref}/logs", d.handle(d.logs))
	mux.HandleFunc("GET /v1/events", d.handle(d.events))
	mux.HandleFunc("POST /v1/vms/{ref}/exec", d.handle(d.exec))
	mux.HandleFunc("GET /v1/vms/{ref}/archive", d.handle(d.archiveGet))
	mux.HandleFunc("PUT /v1/vms/{ref}/archive", d.handle(d.archivePut))
	mux.HandleFunc("GET /v1/vms/{ref}/stats", d.handle(d.stats))
	mux.HandleFunc("GET /v1/vms/{ref}/top", d.handle(d.top))
	d.imageRoutes(mux)
	d.networkRoutes(mux)
	d.volumeRoutes(mux)
	d.templateRoutes(mux)
	d.checkpointRoutes(mux)
	d.systemRoutes(mux)
	mux.Handle("GET /metrics", d.metrics.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s (this daemon serves /%s/)", r.Method, r.URL.Path, api.Version))
	})
	return d.guard(d.metrics.Instrument(mux))
}

// statusOf maps kiln's sentinel errors to HTTP status codes, in one place.
func statusOf(err error) int {
	switch {
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, errdefs.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errdefs.ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, api.Error{Message: msg})
}

// handler is an endpoint: it answers w itself, or returns the error that
// stops it before it has answered anything, and handle answers that.
type handler func(w http.ResponseWriter, r *http.Request) error

// handle adapts an endpoint to net/http: the one place where an error
// becomes an answer, its status from statusOf. A handler that has begun
// answering (a stream) reports later failures in the stream and returns
// nil.
func (d *Daemon) handle(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			d.fail(w, err)
		}
	}
}

func (d *Daemon) fail(w http.ResponseWriter, err error) {
	code := statusOf(err)
	if code == http.StatusInternalServerError {
		d.log.Warn("request failed", "err", err)
	}
	writeError(w, code, err.Error())
}

// decode reads a JSON body strictly: bounded, no unknown fields.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("request body is over %d bytes: %w", maxBody, errdefs.ErrInvalidArgument)
		}
		return fmt.Errorf("malformed JSON in request body: %s: %w", err.Error(), errdefs.ErrInvalidArgument)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("malformed JSON in request body: more than one value, or garbage after it: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

func (d *Daemon) info(w http.ResponseWriter, r *http.Request) error {
	views, err := d.sup.List(r.Context())
	if err != nil {
		return err
	}
	b := buildinfo.Self()
	info := api.Info{Version: api.Version, Root: d.cfg.Root, PID: os.Getpid(), VMs: len(views),
		BuildID: b.BuildID, Commit: b.Commit, GoVersion: b.GoVersion}
	if exe, err := os.Executable(); err == nil {
		info.Executable = exe
	}
	d.monitorOnce.Do(func() { d.monitor = d.rt.MonitorVersion() })
	info.Monitor = d.monitor
	if k, err := d.rt.Kernels().Resolve(""); err == nil {
		info.Kernel = fmt.Sprintf("%s: %s", k.Name, k.Origin)
	} else {
		info.Kernel = "none: " + err.Error()
	}
	if store, err := d.rt.Images(); err == nil {
		if imgs, err := store.List(); err == nil {
			info.Images = len(imgs)
		}
	}
	info.Templates = !d.cfg.NoTemplates
	if d.uid == 0 {
		info.Confinement = fmt.Sprintf("jailed: each QEMU its own uid (%d-%d), namespaces, root and cgroup, with the seccomp sandbox", d.conf.UIDs.Min, d.conf.UIDs.Max)
	} else {
		info.Confinement = fmt.Sprintf("unconfined: the daemon runs as uid %d, not root, so QEMU runs as that uid without a jail", d.uid)
	}
	if h, err := cgroup.Detect(); err == nil {
		info.Cgroup = fmt.Sprintf("v%d", h.Version)
	} else {
		info.Cgroup = "none: " + err.Error()
	}
	var fs unix.Statfs_t
	if unix.Statfs(d.cfg.Root, &fs) == nil {
		info.FreeBytes = int64(fs.Bavail) * fs.Bsize
	}
	info.HostCPUs = runtime.NumCPU()
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		info.HostMemory = int64(si.Totalram) * int64(si.Unit)
	}
	for _, v := range views {
		switch v.Record.Status {
		case state.StatusRunning:
			info.Running++
		case state.StatusPaused:
			info.Paused++
		}
	}
	if c, err := d.rt.ChooseAccel(""); err == nil {
		info.Accel = string(c.Accel)
	}
	writeJSON(w, http.StatusOK, info)
	return nil
}

func (d *Daemon) create(w http.ResponseWriter, r *http.Request) error {
	var c api.VMConfig
	if err := decode(w, r, &c); err != nil {
		return err
	}
	v, warnings, err := d.sup.Create(r.Context(), vm.Spec{VMConfig: c})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, api.CreateResponse{ID: v.Record.ID, Name: v.Record.Name, Warnings: warnings})
	return nil
}

func (d *Daemon) list(w http.ResponseWriter, r *http.Request) error {
	views, err := d.sup.List(r.Context())
	if err != nil {
		return err
	}
	out := []api.VM{}
	for _, v := range views {
		out = append(out, toAPI(v))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) inspect(w http.ResponseWriter, r *http.Request) error {
	v, err := d.sup.Get(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toAPI(v))
	return nil
}

func (d *Daemon) start(w http.ResponseWriter, r *http.Request) error {
	if err := d.sup.StartFrom(r.Context(), r.PathValue("ref"), r.URL.Query().Get("checkpoint")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// graceParam reads ?t=SECONDS; absent means the VM's own stop timeout (-1).
func graceParam(r *http.Request) (time.Duration, error) {
	t := r.URL.Query().Get("t")
	if t == "" {
		return -1, nil
	}
	n, err := strconv.Atoi(t)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid stop timeout %q: want whole seconds, 0 or more: %w", t, errdefs.ErrInvalidArgument)
	}
	return time.Duration(n) * time.Second, nil
}

func (d *Daemon) stop(w http.ResponseWriter, r *http.Request) error {
	grace, err := graceParam(r)
	if err == nil {
		err = d.sup.Stop(r.Context(), r.PathValue("ref"), grace)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (d *Daemon) restart(w http.ResponseWriter, r *http.Request) error {
	grace, err := graceParam(r)
	if err == nil {
		err = d.sup.Restart(r.Context(), r.PathValue("ref"), grace)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// noContent answers 204 when err is nil, else returns err for handle.
func noContent(w http.ResponseWriter, err error) error {
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (d *Daemon) rename(w http.ResponseWriter, r *http.Request) error {
	name := r.URL.Query().Get("name")
	if name == "" {
		return errdefs.Invalid("rename: no new name (?name=)")
	}
	if err := d.sup.Rename(r.Context(), r.PathValue("ref"), name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (d *Daemon) kill(w http.ResponseWriter, r *http.Request) error {
	name := r.URL.Query().Get("signal")
	if name == "" {
		name = "KILL"
	}
	sig, err := options.ParseSignal(name)
	if err == nil {
		err = d.sup.Kill(r.Context(), r.PathValue("ref"), syscall.Signal(sig))
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// wait answers with the exit code when the VM's run ends. The status line
// goes out as soon as the wait is in place, so a client can wait on the next
// run (condition=next-exit) and only then start the VM.
func (d *Daemon) wait(w http.ResponseWriter, r *http.Request) error {
	next := r.URL.Query().Get("condition") == "next-exit"
	var started bool
	code, msg, err := d.sup.Wait(r.Context(), r.PathValue("ref"), next, func() {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		started = true
	})
	if err != nil && !started {
		return err
	}
	if err != nil {
		return nil // the answer had begun: the client sees it cut short
	}
	_ = json.NewEncoder(w).Encode(api.WaitResponse{ExitCode: code, Error: msg})
	return nil
}

func (d *Daemon) remove(w http.ResponseWriter, r *http.Request) error {
	flag := func(k string) bool { v := r.URL.Query().Get(k); return v == "1" || v == "true" }
	o := supervisor.RemoveOptions{Force: flag("force"), Volumes: flag("v")}
	if err := d.sup.Remove(r.Context(), r.PathValue("ref"), o); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// timeParam reads a time as RFC 3339, Unix seconds, or a duration ago
// ("10m"), as docker's --since does.
func timeParam(r *http.Request, key string) (time.Time, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return time.Time{}, nil
	}
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		if math.IsNaN(n) || math.IsInf(n, 0) || math.Abs(n) > 1e10 {
			return time.Time{}, fmt.Errorf("invalid %s %q: Unix seconds out of range: %w", key, v, errdefs.ErrInvalidArgument)
		}
		return time.Unix(0, int64(n*1e9)), nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		return time.Now().Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("invalid %s %q: want a duration (10m), Unix seconds or an RFC 3339 time: %w", key, v, errdefs.ErrInvalidArgument)
}

// streamer writes newline-delimited JSON, flushing after each value.
type streamer struct {
	w  http.ResponseWriter
	bw *bufio.Writer
	fl http.Flusher
}

func newStreamer(w http.ResponseWriter) *streamer {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	return &streamer{w: w, bw: bufio.NewWriter(w), fl: fl}
}

func (s *streamer) send(v any, flush bool) error {
	if err := json.NewEncoder(s.bw).Encode(v); err != nil {
		return err
	}
	if flush {
		if err := s.bw.Flush(); err != nil {
			return err
		}
		if s.fl != nil {
			s.fl.Flush()
		}
	}
	return nil
}

func (d *Daemon) logs(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	ref := r.PathValue("ref")
	if q.Get("console") == "1" {
		paths, err := d.sup.Console(r.Context(), ref)
		if err != nil {
			return err
		}
		var files []*os.File
		for _, p := range paths {
			f, err := os.Open(p)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("reading console: %w", err)
			}
			defer f.Close()
			files = append(files, f)
		}
		w.Header().Set("Content-Type", "text/plain")
		for _, f := range files {
			if _, err := io.Copy(w, f); err != nil {
				return nil
			}
		}
		return nil
	}
	lq := supervisor.LogQuery{Tail: -1, Follow: q.Get("follow") == "1"}
	var err error
	if lq.Since, err = timeParam(r, "since"); err == nil {
		lq.Until, err = timeParam(r, "until")
	}
	if t := q.Get("tail"); t != "" && t != "all" && err == nil {
		lq.Tail, err = strconv.Atoi(t)
		if err != nil || lq.Tail < 0 {
			err = fmt.Errorf("invalid tail %q: want a number of lines or all: %w", t, errdefs.ErrInvalidArgument)
		}
	}
	if err != nil {
		return err
	}
	entries, live, cancel, err := d.sup.Logs(r.Context(), ref, lq)
	if err != nil {
		return err
	}
	defer cancel()
	s := newStreamer(w)
	for i, e := range entries {
		if s.send(api.LogEntry{Stream: e.Stream, Time: e.Time, Line: e.Line}, i == len(entries)-1) != nil {
			return nil
		}
	}
	if err := s.bw.Flush(); err != nil || live == nil {
		return nil
	}
	if s.fl != nil {
		s.fl.Flush()
	}
	for {
		select {
		case e, ok := <-live:
			if !ok {
				return nil
			}
			if s.send(api.LogEntry{Stream: e.Stream, Time: e.Time, Line: e.Line}, len(live) == 0) != nil {
				return nil
			}
		case <-r.Context().Done():
			return nil
		}
	}
}

func (d *Daemon) events(w http.ResponseWriter, r *http.Request) error {
	since, err := timeParam(r, "since")
	var until time.Time
	if err == nil {
		until, err = timeParam(r, "until")
	}
	if err != nil {
		return err
	}
	follow := r.URL.Query().Get("follow") != "0" && until.IsZero()
	var live <-chan state.Event
	cancel := func() {}
	if follow {
		live, cancel = d.sup.Subscribe()
	}
	defer cancel()
	var past []state.Event
	if !since.IsZero() || !until.IsZero() {
		if past, err = d.db.Events(r.Context(), since, until); err != nil {
			return err
		}
	}
	s := newStreamer(w)
	var last int64
	for _, e := range past {
		last = e.Seq
		if s.send(eventToAPI(e), false) != nil {
			return nil
		}
	}
	if s.bw.Flush() != nil || !follow {
		return nil
	}
	if s.fl != nil {
		s.fl.Flush()
	}
	for {
		select {
		case e, ok := <-live:
			if !ok {
				return nil
			}
			if e.Seq <= last {
				continue // already sent from the store
			}
			if s.send(eventToAPI(e), true) != nil {
				return nil
			}
		case <-r.Context().Done():
			return nil
		}
	}
}

func (d *Daemon) update(w http.ResponseWriter, r *http.Request) error {
	var u api.VMUpdate
	if err := decode(w, r, &u); err != nil {
		return err
	}
	if u.Restart == nil && u.MemoryMiB == nil && u.CPUs == nil {
		return errdefs.Invalid("nothing to update: give a restart policy, memory or CPUs")
	}
	warnings, err := d.sup.Update(r.Context(), r.PathValue("ref"), vm.Resources{Restart: u.Restart, MemoryMiB: u.MemoryMiB, CPUs: u.CPUs})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.UpdateResponse{Warnings: warnings})
	return nil
}

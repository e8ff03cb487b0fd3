package dockerapi

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/storage"
	"github.com/docker/go-connections/nat"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
)

func (s *Server) containerRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /containers/create", s.handle(s.createContainer))
	mux.HandleFunc("GET /containers/json", s.handle(s.listContainers))
	mux.HandleFunc("GET /containers/{id}/json", s.handle(s.inspectContainer))
	mux.HandleFunc("POST /containers/{id}/start", s.handle(s.startContainer))
	mux.HandleFunc("POST /containers/{id}/stop", s.handle(s.stopContainer))
	mux.HandleFunc("POST /containers/{id}/restart", s.handle(s.restartContainer))
	mux.HandleFunc("POST /containers/{id}/kill", s.handle(s.killContainer))
	mux.HandleFunc("POST /containers/{id}/wait", s.handle(s.waitContainer))
	mux.HandleFunc("DELETE /containers/{id}", s.handle(s.removeContainer))
	mux.HandleFunc("POST /containers/{id}/rename", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return noContent(w, s.kiln.Rename(r.Context(), r.PathValue("id"), r.URL.Query().Get("name")))
	}))
	mux.HandleFunc("POST /containers/{id}/pause", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return noContent(w, s.kiln.Pause(r.Context(), r.PathValue("id")))
	}))
	mux.HandleFunc("POST /containers/{id}/unpause", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return noContent(w, s.kiln.Unpause(r.Context(), r.PathValue("id")))
	}))
	mux.HandleFunc("GET /containers/{id}/logs", s.handle(s.containerLogs))
	mux.HandleFunc("POST /containers/{id}/attach", s.handle(s.attachContainer))
	mux.HandleFunc("POST /containers/{id}/resize", func(w http.ResponseWriter, r *http.Request) {
		// The main program has no terminal (Tty is refused at create).
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /containers/{id}/archive", s.handle(s.archiveGet))
	mux.HandleFunc("HEAD /containers/{id}/archive", s.handle(s.archiveHead))
	mux.HandleFunc("PUT /containers/{id}/archive", s.handle(s.archivePut))
	mux.HandleFunc("GET /containers/{id}/stats", s.handle(s.containerStats))
	mux.HandleFunc("GET /containers/{id}/top", s.handle(s.containerTop))
	mux.HandleFunc("POST /containers/{id}/update", s.handle(s.updateContainer))
}

func noContent(w http.ResponseWriter, err error) error {
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) createContainer(w http.ResponseWriter, r *http.Request) error {
	var req container.CreateRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	name := r.URL.Query().Get("name")
	name = strings.TrimPrefix(name, "/")
	cfg, warnings, err := toVMConfig(name, req)
	if err != nil {
		return err
	}
	// docker's create never pulls: its client pulls on a 404 and asks
	// again, showing the pull's progress.
	ok, err := s.kiln.ImageExists(r.Context(), cfg.Image)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("No such image: %s: %w", cfg.Image, errdefs.ErrNotFound)
	}
	created, err := s.kiln.Create(r.Context(), cfg)
	if err != nil {
		return err
	}
	warnings = append(warnings, created.Warnings...)
	if warnings == nil {
		warnings = []string{}
	}
	writeJSON(w, http.StatusCreated, container.CreateResponse{ID: created.ID, Warnings: warnings})
	return nil
}

// view is what the list and inspect answers are made of: a VM with its
// image, looked up once per image.
type view struct {
	vm  api.VM
	img *api.Image
}

func (s *Server) imageOf(ctx context.Context, cache map[string]*api.Image, v api.VM) *api.Image {
	ref := v.ImageID
	if ref == "" {
		return nil
	}
	if img, ok := cache[ref]; ok {
		return img
	}
	var out *api.Image
	if img, err := s.kiln.InspectImage(ctx, ref); err == nil {
		out = &img
	}
	cache[ref] = out
	return out
}

func (s *Server) listContainers(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	args, err := filters.FromJSON(q.Get("filters"))
	if err != nil {
		return refuse("invalid filters %q: %v", q.Get("filters"), err)
	}
	if err := args.Validate(map[string]bool{"id": true, "name": true, "label": true, "status": true, "ancestor": true, "exited": true, "network": true, "volume": true, "health": true}); err != nil {
		return refuse("%v", err)
	}
	limit := -1
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil {
			return refuse("invalid limit %q: want a number", l)
		}
	}
	// The request is judged whole before the daemon is asked.
	vms, err := s.kiln.List(r.Context())
	if err != nil {
		return err
	}
	all := boolParam(r, "all")
	imgs := map[string]*api.Image{}
	now := time.Now()
	out := []container.Summary{}
	// Newest first, as docker lists.
	for i := len(vms) - 1; i >= 0; i-- {
		v := vms[i]
		st := stateOf(v.State)
		if !all && st != "running" && st != "paused" && st != "restarting" && args.Len() == 0 {
			continue
		}
		img := s.imageOf(r.Context(), imgs, v)
		if !matchContainer(args, v, img, st) {
			continue
		}
		sm := container.Summary{
			ID: v.ID, Names: []string{"/" + v.Name}, Image: v.Config.Image, ImageID: v.ImageID,
			Command: strings.Join(command(v, img), " "), Created: v.Created.Unix(),
			Ports: summaryPorts(v), Labels: labelsOf(v, img),
			State: container.ContainerState(st), Status: statusLine(v.State, now),
			NetworkSettings: &container.NetworkSettingsSummary{Networks: map[string]*network.EndpointSettings{networkName(v): endpoint(v)}},
			Mounts:          mountPoints(v, nil),
		}
		if sm.Image == "" {
			sm.Image = v.Config.Program
		}
		sm.HostConfig.NetworkMode = networkName(v)
		out = append(out, sm)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// labelsOf is a VM's labels as docker shows a container's: its image's,
// with its own over them.
func labelsOf(v api.VM, img *api.Image) map[string]string {
	out := map[string]string{}
	if img != nil {
		for k, val := range img.Config.Labels {
			out[k] = val
		}
	}
	for k, val := range v.Config.Labels {
		out[k] = val
	}
	return out
}

func labelsOrEmpty(l map[string]string) map[string]string {
	if l == nil {
		return map[string]string{}
	}
	return l
}

// matchContainer applies docker ps's filters.
func matchContainer(args filters.Args, v api.VM, img *api.Image, st string) bool {
	if args.Contains("id") && !matchAny(args.Get("id"), func(f string) bool { return strings.HasPrefix(v.ID, f) }) {
		return false
	}
	if args.Contains("name") && !matchAny(args.Get("name"), func(f string) bool { return strings.Contains(v.Name, strings.TrimPrefix(f, "/")) }) {
		return false
	}
	if args.Contains("status") && !args.ExactMatch("status", st) {
		return false
	}
	if !args.MatchKVList("label", labelsOf(v, img)) {
		return false
	}
	if args.Contains("exited") && (st != "exited" || !args.ExactMatch("exited", strconv.Itoa(v.State.ExitCode))) {
		return false
	}
	if args.Contains("ancestor") && !matchAny(args.Get("ancestor"), func(f string) bool {
		return f == v.Config.Image || f == v.ImageID || strings.HasPrefix(v.ImageID, "sha256:"+f) ||
			(img != nil && (contains(img.RepoTags, f) || contains(img.RepoTags, f+":latest")))
	}) {
		return false
	}
	if args.Contains("network") && !args.ExactMatch("network", networkName(v)) {
		return false
	}
	if args.Contains("volume") && !matchAny(args.Get("volume"), func(f string) bool {
		for _, m := range v.Config.Mounts {
			if m.Source == f || m.Target == f {
				return true
			}
		}
		return false
	}) {
		return false
	}
	if args.Contains("health") {
		h := "none"
		if v.State.Health != nil {
			h = v.State.Health.Status
		}
		if !args.ExactMatch("health", h) {
			return false
		}
	}
	return true
}

func matchAny(vals []string, fn func(string) bool) bool {
	for _, v := range vals {
		if fn(v) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (s *Server) inspectContainer(w http.ResponseWriter, r *http.Request) error {
	v, err := s.kiln.Inspect(r.Context(), r.PathValue("id"))
	if err != nil {
		return noSuchContainer(r.PathValue("id"), err)
	}
	var vols map[string]api.Volume
	if len(v.Config.Mounts) > 0 {
		if list, err := s.kiln.Volumes(r.Context()); err == nil {
			vols = map[string]api.Volume{}
			for _, vol := range list {
				vols[vol.Name] = vol
			}
		}
	}
	img := s.imageOf(r.Context(), map[string]*api.Image{}, v)
	writeJSON(w, http.StatusOK, s.toInspect(v, img, vols))
	return nil
}

// noSuchContainer gives a lookup's not-found docker's words.
func noSuchContainer(ref string, err error) error {
	if errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("No such container: %s: %w", ref, errdefs.ErrNotFound)
	}
	return err
}

func (s *Server) toInspect(v api.VM, img *api.Image, vols map[string]api.Volume) container.InspectResponse {
	cmdline := command(v, img)
	var path string
	var args []string
	if len(cmdline) > 0 {
		path, args = cmdline[0], cmdline[1:]
	}
	st := v.State
	state := &container.State{
		Status: container.ContainerState(stateOf(st)), Running: st.Running, Paused: st.Paused,
		Restarting: st.Status == "restarting", OOMKilled: st.OOMKilled, Dead: st.Status == "dead",
		Pid: st.PID, ExitCode: st.ExitCode, Error: st.Error,
		StartedAt: dockerTime(st.StartedAt), FinishedAt: dockerTime(st.FinishedAt),
	}
	if h := st.Health; h != nil {
		state.Health = &container.Health{Status: container.HealthStatus(h.Status), FailingStreak: h.FailingStreak}
		for _, l := range h.Log {
			state.Health.Log = append(state.Health.Log, &container.HealthcheckResult{Start: l.Start, End: l.End, ExitCode: l.ExitCode, Output: l.Output})
		}
	}
	c := v.Config
	hc := &container.HostConfig{
		NetworkMode:   container.NetworkMode(networkName(v)),
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyMode(c.Restart.Name), MaximumRetryCount: c.Restart.MaxRetries},
		AutoRemove:    c.AutoRemove,
		PortBindings:  portBindings(c.Ports),
		ExtraHosts:    c.ExtraHosts,
		LogConfig:     container.LogConfig{Type: "json-file", Config: map[string]string{}},
		Runtime:       "kiln",
	}
	if hc.RestartPolicy.Name == "" {
		hc.RestartPolicy.Name = container.RestartPolicyDisabled
	}
	if c.Log.MaxSize > 0 {
		hc.LogConfig.Config["max-size"] = strconv.FormatInt(c.Log.MaxSize, 10)
	}
	if c.Log.MaxFiles > 0 {
		hc.LogConfig.Config["max-file"] = strconv.Itoa(c.Log.MaxFiles)
	}
	hc.Memory = int64(c.MemoryMiB) << 20
	hc.NanoCPUs = int64(c.CPUs) * 1e9
	for _, m := range c.Mounts {
		if m.Type == "volume" && !m.Anonymous || m.Type == "bind" {
			b := m.Source + ":" + m.Target
			if m.ReadOnly {
				b += ":ro"
			}
			hc.Binds = append(hc.Binds, b)
		}
	}
	for _, u := range c.Ulimits {
		hc.Ulimits = append(hc.Ulimits, &container.Ulimit{Name: u.Name, Soft: int64(u.Soft), Hard: int64(u.Hard)})
	}
	stopTimeout := c.StopTimeout
	if stopTimeout == 0 {
		stopTimeout = 10
	}
	cfg := &container.Config{
		Hostname: v.Name, User: c.User, Env: c.Env, Cmd: c.Cmd, Entrypoint: c.Entrypoint,
		Image: c.Image, WorkingDir: c.WorkingDir, Labels: labelsOrEmpty(c.Labels),
		StopTimeout: &stopTimeout, ExposedPorts: map[nat.Port]struct{}{},
	}
	if cfg.Image == "" {
		cfg.Image = c.Program
	}
	if img != nil {
		cfg.Env = mergeEnv(img.Config.Env, c.Env)
		if len(cfg.Cmd) == 0 && len(c.Entrypoint) == 0 {
			cfg.Cmd = img.Config.Cmd
		}
		if len(cfg.Entrypoint) == 0 {
			cfg.Entrypoint = img.Config.Entrypoint
		}
		if cfg.WorkingDir == "" {
			cfg.WorkingDir = img.Config.WorkingDir
		}
		if cfg.User == "" {
			cfg.User = img.Config.User
		}
		cfg.StopSignal = img.Config.StopSignal
		for k, val := range img.Config.Labels {
			if _, ok := cfg.Labels[k]; !ok {
				cfg.Labels[k] = val
			}
		}
	}
	if h := c.Healthcheck; h != nil {
		cfg.Healthcheck = &container.HealthConfig{Test: h.Test, Interval: time.Duration(h.Interval), Timeout: time.Duration(h.Timeout), StartPeriod: time.Duration(h.StartPeriod), Retries: h.Retries}
	}
	pm := portMap(v)
	for p := range pm {
		cfg.ExposedPorts[p] = struct{}{}
	}
	out := container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID: v.ID, Created: dockerTime(v.Created), Path: path, Args: args, State: state,
			Image: v.ImageID, Name: "/" + v.Name, RestartCount: st.RestartCount, Driver: "kiln",
			Platform: "linux", LogPath: "", HostConfig: hc,
			GraphDriver: storage.DriverData{Name: "kiln", Data: map[string]string{"Dir": v.Dir}},
		},
		Mounts: mountPoints(v, vols),
		Config: cfg,
		NetworkSettings: &container.NetworkSettings{
			NetworkSettingsBase: container.NetworkSettingsBase{Ports: pm, SandboxKey: ""},
			Networks:            map[string]*network.EndpointSettings{networkName(v): endpoint(v)},
		},
	}
	if ns := v.NetworkSettings; ns != nil {
		out.NetworkSettings.DefaultNetworkSettings = container.DefaultNetworkSettings{ //nolint:staticcheck // 1.41 clients read these
			IPAddress: ns.IPAddress, IPPrefixLen: ns.PrefixLen, Gateway: ns.Gateway, MacAddress: ns.MACAddress,
		}
	}
	return out
}

// mergeEnv is base with over's variables replacing or adding to it.
func mergeEnv(base, over []string) []string {
	out := append([]string{}, base...)
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, b := range out {
			if bk, _, _ := strings.Cut(b, "="); bk == k {
				out[i], replaced = kv, true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

func portBindings(ports []api.PortMapping) nat.PortMap {
	pm := nat.PortMap{}
	for _, p := range ports {
		k := nat.Port(fmt.Sprintf("%d/%s", p.GuestPort, protoOf(p)))
		hp := ""
		if p.HostPort != 0 {
			hp = strconv.Itoa(p.HostPort)
		}
		pm[k] = append(pm[k], nat.PortBinding{HostIP: p.HostIP, HostPort: hp})
	}
	return pm
}

func (s *Server) startContainer(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	v, err := s.kiln.Inspect(r.Context(), id)
	if err != nil {
		return noSuchContainer(id, err)
	}
	if v.State.Running {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	return noContent(w, s.kiln.Start(r.Context(), id))
}

// grace reads docker's ?t= (seconds; -1 or absent: the container's own).
func grace(r *http.Request) (*time.Duration, error) {
	t := r.URL.Query().Get("t")
	if t == "" {
		return nil, nil
	}
	n, err := strconv.Atoi(t)
	if err != nil {
		return nil, refuse("invalid t %q: want seconds", t)
	}
	if n < 0 {
		return nil, nil
	}
	d := time.Duration(n) * time.Second
	return &d, nil
}

func (s *Server) stopContainer(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	g, err := grace(r)
	if err != nil {
		return err
	}
	v, err := s.kiln.Inspect(r.Context(), id)
	if err != nil {
		return noSuchContainer(id, err)
	}
	if !v.State.Running && v.State.Status != "restarting" && v.State.Status != "starting" {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	return noContent(w, s.kiln.Stop(r.Context(), id, g))
}

func (s *Server) restartContainer(w http.ResponseWriter, r *http.Request) error {
	g, err := grace(r)
	if err != nil {
		return err
	}
	return noContent(w, noSuchContainer(r.PathValue("id"), s.kiln.Restart(r.Context(), r.PathValue("id"), g)))
}

func (s *Server) killContainer(w http.ResponseWriter, r *http.Request) error {
	sig := r.URL.Query().Get("signal")
	if sig == "" {
		sig = "KILL"
	}
	sig = strings.TrimPrefix(strings.ToUpper(sig), "SIG")
	return noContent(w, noSuchContainer(r.PathValue("id"), s.kiln.Kill(r.Context(), r.PathValue("id"), sig)))
}

func (s *Server) removeContainer(w http.ResponseWriter, r *http.Request) error {
	o := client.RemoveOptions{Force: boolParam(r, "force"), Volumes: boolParam(r, "v")}
	if boolParam(r, "link") {
		return refuse("links are not supported")
	}
	return noContent(w, noSuchContainer(r.PathValue("id"), s.kiln.Remove(r.Context(), r.PathValue("id"), o)))
}

// waitContainer is docker's wait: the answer's header goes out once the
// wait is in place (docker's client starts the container after that), the
// body when the condition is met.
func (s *Server) waitContainer(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	cond := r.URL.Query().Get("condition")
	switch cond {
	case "", "not-running", "next-exit", "removed":
	default:
		return refuse("invalid condition %q: want not-running, next-exit or removed", cond)
	}
	v, err := s.kiln.Inspect(r.Context(), id)
	if err != nil {
		return noSuchContainer(id, err)
	}
	next := cond == "next-exit" || cond == "removed" && !v.State.Running
	started := false
	res, err := s.kiln.Wait(r.Context(), v.ID, next, func() {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		started = true
	})
	if err != nil && !started {
		return noSuchContainer(id, err)
	}
	out := container.WaitResponse{StatusCode: int64(res.ExitCode)}
	if err != nil {
		out.Error = &container.WaitExitError{Message: err.Error()}
	} else if res.Error != "" {
		out.Error = &container.WaitExitError{Message: res.Error}
	}
	if cond == "removed" && err == nil {
		// An auto-removed VM goes right after its end; wait for it, bounded.
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			if _, err := s.kiln.Inspect(r.Context(), v.ID); errors.Is(err, errdefs.ErrNotFound) {
				break
			}
			select {
			case <-r.Context().Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	_ = json.NewEncoder(w).Encode(out)
	return nil
}

// Stream kinds of docker's multiplexed framing.
const (
	streamStdin  = 0
	streamStdout = 1
	streamStderr = 2
)

// muxWriter writes docker's multiplexed stream: each write is one frame,
// an 8-byte header (stream, three zero bytes, big-endian length) and the
// bytes. It is safe for use by several goroutines.
type muxWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (m *muxWriter) frame(stream byte, p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var hdr [8]byte
	hdr[0] = stream
	binary.BigEndian.PutUint32(hdr[4:], uint32(len(p)))
	if _, err := m.w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := m.w.Write(p)
	if f, ok := m.w.(http.Flusher); ok {
		f.Flush()
	}
	return err
}

type streamWriter struct {
	m      *muxWriter
	stream byte
}

func (s streamWriter) Write(p []byte) (int, error) {
	if err := s.m.frame(s.stream, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// logOptions reads docker's log parameters into kiln's.
func logOptions(r *http.Request) (client.LogOptions, bool, bool, bool, error) {
	q := r.URL.Query()
	o := client.LogOptions{Follow: boolParam(r, "follow"), Tail: -1}
	if t := q.Get("tail"); t != "" && t != "all" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			return o, false, false, false, refuse("invalid tail %q: want a number of lines or all", t)
		}
		o.Tail = n
	}
	for _, p := range []struct {
		name string
		to   *string
	}{{"since", &o.Since}, {"until", &o.Until}} {
		v := q.Get(p.name)
		if v == "" || v == "0" {
			continue
		}
		t, err := parseUnixTime(v)
		if err != nil {
			return o, false, false, false, refuse("invalid %s %q: want Unix seconds", p.name, v)
		}
		*p.to = t.Format(time.RFC3339Nano)
	}
	stdout, stderr := boolParam(r, "stdout"), boolParam(r, "stderr")
	if !stdout && !stderr {
		return o, false, false, false, refuse("you must choose at least one stream (stdout or stderr)")
	}
	return o, stdout, stderr, boolParam(r, "timestamps"), nil
}

// parseUnixTime reads docker's "seconds[.nanoseconds]".
func parseUnixTime(v string) (time.Time, error) {
	sec, frac, _ := strings.Cut(v, ".")
	s, err := strconv.ParseInt(sec, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	var ns int64
	if frac != "" {
		frac = (frac + "000000000")[:9]
		if ns, err = strconv.ParseInt(frac, 10, 64); err != nil {
			return time.Time{}, err
		}
	}
	return time.Unix(s, ns), nil
}

func (s *Server) containerLogs(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	o, stdout, stderr, stamps, err := logOptions(r)
	if err != nil {
		return err
	}
	if _, err := s.kiln.Inspect(r.Context(), id); err != nil {
		return noSuchContainer(id, err)
	}
	w.Header().Set("Content-Type", "application/vnd.docker.multiplexed-stream")
	w.WriteHeader(http.StatusOK)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	mw := &muxWriter{w: w}
	_ = s.kiln.Logs(r.Context(), id, o, func(e api.LogEntry) error {
		return writeEntry(mw, e, stdout, stderr, stamps)
	})
	return nil
}

func writeEntry(mw *muxWriter, e api.LogEntry, stdout, stderr, stamps bool) error {
	stream := byte(streamStdout)
	if e.Stream == "stderr" {
		if !stderr {
			return nil
		}
		stream = streamStderr
	} else if !stdout {
		return nil
	}
	line := e.Line
	if stamps {
		line = e.Time.UTC().Format(time.RFC3339Nano) + " " + line
	}
	return mw.frame(stream, []byte(line))
}

// attachContainer is docker's attach: the connection is taken over and
// the program's output (and, with logs=1, what it wrote before) comes on
// it, multiplexed, until the program ends. Attaching to a container that
// is not running waits for its next run, so that docker run's attach
// before start sees everything.
func (s *Server) attachContainer(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if boolParam(r, "stdin") {
		return refuse("attaching stdin is not supported for a VM's main program yet; use docker exec -i")
	}
	stdout, stderr := boolParam(r, "stdout"), boolParam(r, "stderr")
	withLogs, stream := boolParam(r, "logs"), boolParam(r, "stream")
	v, err := s.kiln.Inspect(r.Context(), id)
	if err != nil {
		return noSuchContainer(id, err)
	}
	conn, err := hijack(w, r, true)
	if err != nil {
		return err
	}
	defer conn.Close()
	mw := &muxWriter{w: conn}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The client going away ends the attach. Its half-close (docker's
	// client closes its side when it sends no stdin) does not.
	go func() {
		if _, err := io.Copy(io.Discard, conn); err != nil {
			cancel()
		}
	}()
	since := time.Now()
	if withLogs {
		_ = s.kiln.Logs(ctx, v.ID, client.LogOptions{Tail: -1}, func(e api.LogEntry) error {
			return writeEntry(mw, e, stdout, stderr, false)
		})
		since = time.Now()
	}
	if !stream {
		return nil
	}
	o := client.LogOptions{Follow: true, Tail: -1}
	neverRan := v.State.StartedAt.IsZero() && v.State.Status == "created"
	if !neverRan {
		if !v.State.Running {
			// Its next run: wait until it is under way, then follow it
			// from the attach on.
			if !s.waitStarted(ctx, v.ID, v.State.StartedAt) {
				return nil
			}
		}
		o.Since = since.Format(time.RFC3339Nano)
	}
	_ = s.kiln.Logs(ctx, v.ID, o, func(e api.LogEntry) error {
		return writeEntry(mw, e, stdout, stderr, false)
	})
	return nil
}

// waitStarted waits until the VM's StartedAt is after prev.
func (s *Server) waitStarted(ctx context.Context, id string, prev time.Time) bool {
	for {
		v, err := s.kiln.Inspect(ctx, id)
		if err != nil {
			return false
		}
		if v.State.StartedAt.After(prev) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// containerTop is docker top: the guest's processes, from kiln-init's
// reading of the guest's /proc (ps_args has no ps to go to and is
// ignored).
func (s *Server) containerTop(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	t, err := s.kiln.Top(r.Context(), id)
	if err != nil {
		return noSuchContainer(id, err)
	}
	out := container.TopResponse{Titles: []string{"UID", "PID", "PPID", "STAT", "TIME", "RSS", "CMD"}, Processes: [][]string{}}
	for _, p := range t.Processes {
		d := time.Duration(p.CPUSeconds * float64(time.Second))
		out.Processes = append(out.Processes, []string{
			strconv.FormatUint(uint64(p.UID), 10), strconv.Itoa(p.PID), strconv.Itoa(p.PPID), p.State,
			fmt.Sprintf("%02d:%02d:%02d", int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60),
			strconv.FormatUint(p.RSSBytes/1024, 10) + "K", p.Cmd,
		})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// updateContainer is docker update: the restart policy at once, memory
// and CPUs from the VM's next start (the daemon's warning says so for a
// running one).
func (s *Server) updateContainer(w http.ResponseWriter, r *http.Request) error {
	var uc container.UpdateConfig
	if err := decodeBody(w, r, &uc); err != nil {
		return err
	}
	var u api.VMUpdate
	var warnings []string
	if n := string(uc.RestartPolicy.Name); n != "" {
		spec := n
		if n == "on-failure" && uc.RestartPolicy.MaximumRetryCount > 0 {
			spec += ":" + strconv.Itoa(uc.RestartPolicy.MaximumRetryCount)
		}
		p, err := options.ParseRestartPolicy(spec)
		if err != nil {
			return err
		}
		rp := api.RestartPolicy(p)
		u.Restart = &rp
	}
	if uc.Memory > 0 {
		mib := int((uc.Memory + (1<<20 - 1)) >> 20)
		u.MemoryMiB = &mib
	}
	if uc.NanoCPUs > 0 {
		n := int((uc.NanoCPUs + 1e9 - 1) / 1e9)
		u.CPUs = &n
	}
	if uc.CPUShares > 0 || uc.CPUQuota > 0 || uc.MemoryReservation > 0 || uc.MemorySwap != 0 || uc.PidsLimit != nil || uc.BlkioWeight > 0 {
		warnings = append(warnings, "only the restart policy, Memory and NanoCpus are updated; other resources are ignored")
	}
	if u.Restart == nil && u.MemoryMiB == nil && u.CPUs == nil {
		writeJSON(w, http.StatusOK, container.UpdateResponse{Warnings: append(warnings, "nothing kiln can update was given")})
		return nil
	}
	ws, err := s.kiln.Update(r.Context(), r.PathValue("id"), u)
	if err != nil {
		return noSuchContainer(r.PathValue("id"), err)
	}
	writeJSON(w, http.StatusOK, container.UpdateResponse{Warnings: append(warnings, ws...)})
	return nil
}

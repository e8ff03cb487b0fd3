package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/dockerapi"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/supervisor"
	"kiln.dev/kiln/internal/unixsock"
	"kiln.dev/kiln/internal/vm"
	"kiln.dev/kiln/internal/vmm"
)

func TestStatusOf(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{fmt.Errorf("bad name: %w", errdefs.ErrInvalidArgument), http.StatusBadRequest},
		{fmt.Errorf("no such VM: x: %w", errdefs.ErrNotFound), http.StatusNotFound},
		{fmt.Errorf("name in use: %w", errdefs.ErrConflict), http.StatusConflict},
		{fmt.Errorf("no KVM: %w", errdefs.ErrUnavailable), http.StatusServiceUnavailable},
		{fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", errdefs.ErrNotFound)), http.StatusNotFound},
		{errdefs.Invalid("bad value"), http.StatusBadRequest},
		{errdefs.Mark(errors.New("gone"), errdefs.ErrNotFound), http.StatusNotFound},
		{fmt.Errorf("booting: %w", errdefs.ErrBootFailed), http.StatusInternalServerError},
		{errors.New("disk on fire"), http.StatusInternalServerError},
		// %v loses the sentinel: a plain 500.
		{fmt.Errorf("flattened: %v", errdefs.ErrNotFound), http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			if got := statusOf(tt.err); got != tt.want {
				t.Errorf("statusOf(%q) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

func queryRequest(key, value string) *http.Request {
	return httptest.NewRequest(http.MethodGet, "/v1/events?"+url.Values{key: {value}}.Encode(), nil)
}

func TestTimeParam(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
	}{
		{"", time.Time{}},
		{"2024-01-02T03:04:05Z", time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)},
		{"2024-01-02T03:04:05.123456789+02:00", time.Date(2024, 1, 2, 1, 4, 5, 123456789, time.UTC)},
		{"1700000000", time.Unix(1700000000, 0)},
		{"1700000000.5", time.Unix(1700000000, 5e8)},
		{"0", time.Unix(0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := timeParam(queryRequest("since", tt.in), "since")
			if err != nil {
				t.Fatalf("timeParam(%q): %v", tt.in, err)
			}
			// Float seconds are not exact to the nanosecond.
			if d := got.Sub(tt.want).Abs(); d > time.Microsecond || got.IsZero() != tt.want.IsZero() {
				t.Errorf("timeParam(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}

	t.Run("duration ago", func(t *testing.T) {
		before := time.Now()
		got, err := timeParam(queryRequest("since", "10m"), "since")
		after := time.Now()
		if err != nil {
			t.Fatal(err)
		}
		if got.Before(before.Add(-10*time.Minute)) || got.After(after.Add(-10*time.Minute)) {
			t.Errorf("timeParam(10m) = %v, want between %v and %v", got, before.Add(-10*time.Minute), after.Add(-10*time.Minute))
		}
	})

	for _, bad := range []string{"yesterday", "10 minutes", "2024-01-02", "1700000000s5"} {
		t.Run("bad "+bad, func(t *testing.T) {
			got, err := timeParam(queryRequest("until", bad), "until")
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("timeParam(%q) = %v, %v; want ErrInvalidArgument", bad, got, err)
			}
			if !strings.Contains(err.Error(), "until") || !strings.Contains(err.Error(), bad) {
				t.Errorf("error %q does not name the parameter and value", err)
			}
		})
	}
}

// strconv.ParseFloat accepts NaN and Inf, which are not times.
func TestTimeParamNonFinite(t *testing.T) {
	for _, v := range []string{"NaN", "Inf", "-inf"} {
		t.Run(v, func(t *testing.T) {
			got, err := timeParam(queryRequest("since", v), "since")
			if err == nil {
				t.Fatalf("regression: handlers.go timeParam: ParseFloat takes %q as Unix seconds and returns %v instead of ErrInvalidArgument", v, got)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %v is not ErrInvalidArgument", err)
			}
		})
	}
}

func TestGraceParam(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{in: "", want: -1},
		{in: "0", want: 0},
		{in: "30", want: 30 * time.Second},
		{in: "-1", wantErr: true},
		{in: "1.5", wantErr: true},
		{in: "10s", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := graceParam(queryRequest("t", tt.in))
			if tt.wantErr {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("graceParam(%q) = %v, %v; want ErrInvalidArgument", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("graceParam(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	big := `{"name":"` + strings.Repeat("a", maxBody) + `"}`
	tests := []struct {
		name    string
		body    string
		wantErr string // "" for success
	}{
		{name: "valid", body: `{"name":"web","cpus":2,"restart":{"name":"always"}}`},
		{name: "valid with trailing space", body: "{\"name\":\"web\"}\n  \n"},
		{name: "malformed", body: `{"name":`, wantErr: "malformed JSON"},
		{name: "wrong type", body: `{"cpus":"two"}`, wantErr: "malformed JSON"},
		{name: "empty", body: ``, wantErr: "malformed JSON"},
		{name: "unknown field", body: `{"name":"web","bogus":1}`, wantErr: "bogus"},
		{name: "over the limit", body: big, wantErr: "request body is over"},
		{name: "two values", body: `{"name":"a"} {"name":"b"}`, wantErr: "more than one value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPost, "/v1/vms", strings.NewReader(tt.body))
			var c api.VMConfig
			err := decode(w, r, &c)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				if c.Name != "web" {
					t.Errorf("decoded name %q, want web", c.Name)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("decode = %v, want ErrInvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

// json.Decoder.More is false before a '}' or ']', so trailing closers
// after the value slip through the "more than one value" check.
func TestDecodeTrailingGarbage(t *testing.T) {
	for _, body := range []string{`{"name":"web"}}`, `{"name":"web"}]`} {
		t.Run(body, func(t *testing.T) {
			var c api.VMConfig
			err := decode(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/v1/vms", strings.NewReader(body)), &c)
			if err == nil {
				t.Fatalf("regression: handlers.go decode: body %q with trailing garbage is accepted (dec.More is false before } or ])", body)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("decode = %v, want ErrInvalidArgument", err)
			}
		})
	}
}

func TestGuard(t *testing.T) {
	tests := []struct {
		name     string
		daemon   int // the daemon's uid
		uid      *int
		origin   string
		wantCode int
		wantMsg  []string
	}{
		{name: "own uid", daemon: 1000, uid: ptr(1000), wantCode: http.StatusOK},
		{name: "allowed uid", daemon: 1000, uid: ptr(2000), wantCode: http.StatusOK},
		{name: "other uid", daemon: 1000, uid: ptr(3000), wantCode: http.StatusForbidden, wantMsg: []string{"uid 3000", "--allow-uid 3000"}},
		{name: "root is not the daemon's uid", daemon: 1000, uid: ptr(0), wantCode: http.StatusForbidden, wantMsg: []string{"uid 0"}},
		{name: "unknown peer", daemon: 1000, uid: ptr(-1), wantCode: http.StatusForbidden},
		{name: "no uid", daemon: 1000, wantCode: http.StatusForbidden},
		{name: "origin from own uid", daemon: 1000, uid: ptr(1000), origin: "http://evil.example", wantCode: http.StatusForbidden, wantMsg: []string{"Origin"}},
		{name: "origin from allowed uid", daemon: 1000, uid: ptr(2000), origin: "null", wantCode: http.StatusForbidden, wantMsg: []string{"Origin"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, msg, called := guarded(t, tt.daemon, tt.uid, tt.origin)
			if code != tt.wantCode {
				t.Fatalf("status %d (%s), want %d", code, msg, tt.wantCode)
			}
			if called != (tt.wantCode == http.StatusOK) {
				t.Errorf("handler called = %v with status %d", called, code)
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(msg, m) {
					t.Errorf("message %q does not contain %q", msg, m)
				}
			}
		})
	}
}

// A request that carries no peer uid must be refused whatever uid the
// daemon runs as; the type assertion's zero value is uid 0, root.
func TestGuardNoUIDRootDaemon(t *testing.T) {
	code, _, called := guarded(t, 0, nil, "")
	if code != http.StatusForbidden || called {
		t.Fatalf("regression: daemon.go guard: a request with no peer uid is treated as uid 0, so a daemon running as root lets it through (status %d, handler called %v); latent: ConnContext always sets peerKey today", code, called)
	}
}

// The Docker API is served behind guard as kiln's own API is
// (serveDockerAPI): a browser's request, or one from a uid the daemon
// does not serve, is refused before the translator reads it, whatever it
// asks; a create the translator would refuse with 400 is a 403 here.
func TestGuardDockerAPI(t *testing.T) {
	d := &Daemon{uid: 1000, cfg: Config{AllowUIDs: []int{2000}}, log: slog.New(slog.DiscardHandler)}
	h := d.guard(dockerapi.New(client.New(filepath.Join(t.TempDir(), "kiln.sock")), dockerapi.Info{Version: "x"}, nil).Handler())
	const privileged = `{"Image":"alpine","HostConfig":{"Privileged":true}}`
	tests := []struct {
		name, method, target, body, origin string
		uid                                *int
		wantCode                           int
		wantMsg                            string
	}{
		{name: "own uid", method: "GET", target: "/v1.41/_ping", uid: ptr(1000), wantCode: http.StatusOK},
		{name: "allowed uid", method: "GET", target: "/_ping", uid: ptr(2000), wantCode: http.StatusOK},
		{name: "own uid, refused by the translator", method: "POST", target: "/v1.41/containers/create", body: privileged, uid: ptr(1000), wantCode: http.StatusBadRequest, wantMsg: "Privileged"},
		{name: "origin", method: "GET", target: "/v1.41/_ping", origin: "http://evil.example", uid: ptr(1000), wantCode: http.StatusForbidden, wantMsg: "Origin"},
		{name: "origin create", method: "POST", target: "/v1.41/containers/create", body: `{"Image":"alpine"}`, origin: "null", uid: ptr(1000), wantCode: http.StatusForbidden, wantMsg: "Origin"},
		{name: "other uid", method: "GET", target: "/_ping", uid: ptr(3000), wantCode: http.StatusForbidden, wantMsg: "uid 3000"},
		{name: "other uid create", method: "POST", target: "/v1.41/containers/create", body: privileged, uid: ptr(3000), wantCode: http.StatusForbidden, wantMsg: "uid 3000"},
		{name: "root is another uid", method: "GET", target: "/v1.41/containers/json", uid: ptr(0), wantCode: http.StatusForbidden, wantMsg: "uid 0"},
		{name: "no peer uid", method: "GET", target: "/_ping", wantCode: http.StatusForbidden, wantMsg: "uid -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.target, strings.NewReader(tt.body))
			if tt.uid != nil {
				req = req.WithContext(context.WithValue(req.Context(), peerKey{}, *tt.uid))
			}
			if tt.origin != "" {
				req.Header.Set("Origin", tt.origin)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tt.wantCode {
				t.Fatalf("status %d (%s), want %d", w.Code, w.Body, tt.wantCode)
			}
			if tt.wantCode == http.StatusOK {
				if w.Body.String() != "OK" || w.Header().Get("Api-Version") != "1.41" {
					t.Errorf("ping answered %q, Api-Version %q", w.Body, w.Header().Get("Api-Version"))
				}
				return
			}
			var e api.Error
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
				t.Fatalf("error body %q: %v", w.Body, err)
			}
			if !strings.Contains(e.Message, tt.wantMsg) {
				t.Errorf("message %q does not contain %q", e.Message, tt.wantMsg)
			}
			if tt.wantCode == http.StatusForbidden && w.Header().Get("Api-Version") != "" {
				t.Errorf("a refused request reached the Docker API (Api-Version %q)", w.Header().Get("Api-Version"))
			}
		})
	}
}

// serveDockerAPI puts its socket behind guard with the peer's uid from
// the connection: the test's own uid is served, a request with an Origin
// header is refused.
func TestServeDockerAPIGuarded(t *testing.T) {
	root := t.TempDir()
	d := &Daemon{uid: os.Getuid(), cfg: Config{Root: root}, log: slog.New(slog.DiscardHandler)}
	errc := make(chan error, 1)
	srv, err := d.serveDockerAPI(errc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	fi, err := os.Stat(DockerSocketPath(root))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("docker.sock mode %o, want 600", perm)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var c net.Conn
		err := unixsock.WithPath(DockerSocketPath(root), func(p string) error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, "unix", p)
			return err
		})
		return c, err
	}}}
	t.Cleanup(hc.CloseIdleConnections)
	get := func(origin string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, "http://docker/v1.41/_ping", nil)
		if err != nil {
			t.Fatal(err)
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(""); code != http.StatusOK || body != "OK" {
		t.Errorf("own uid: %d %q, want 200 OK", code, body)
	}
	if code, body := get("http://evil.example"); code != http.StatusForbidden || !strings.Contains(body, "Origin") {
		t.Errorf("with Origin: %d %q, want 403", code, body)
	}
	select {
	case err := <-errc:
		t.Errorf("serving: %v", err)
	default:
	}
}

func ptr(n int) *int { return &n }

// guarded runs one request through guard; uid nil leaves the peer uid out.
func guarded(t *testing.T, daemonUID int, uid *int, origin string) (code int, msg string, called bool) {
	t.Helper()
	d := &Daemon{uid: daemonUID, cfg: Config{AllowUIDs: []int{2000}}, log: slog.New(slog.DiscardHandler)}
	h := d.guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		called = true
		w.WriteHeader(http.StatusOK)
	}))
	req := httptest.NewRequest(http.MethodGet, "/v1/ping", nil)
	if uid != nil {
		req = req.WithContext(context.WithValue(req.Context(), peerKey{}, *uid))
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		var e api.Error
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
			t.Fatalf("error body %q is not an api.Error: %v", w.Body, err)
		}
		msg = e.Message
	}
	return w.Code, msg, called
}

// TestRoutesRejectBadInput drives the real mux with requests that fail
// before the supervisor is reached, so no runtime is needed.
func TestRoutesRejectBadInput(t *testing.T) {
	d := &Daemon{uid: 1000, log: slog.New(slog.DiscardHandler)}
	h := d.routes()
	tests := []struct {
		method, target, body string
		wantCode             int
		wantMsg              string
	}{
		{"GET", "/v1/ping", "", http.StatusOK, ""},
		{"GET", "/v2/vms", "", http.StatusNotFound, "/v1/"},
		{"POST", "/v1/vms", `{"name":`, http.StatusBadRequest, "malformed JSON"},
		{"POST", "/v1/vms", `{"nmae":"x"}`, http.StatusBadRequest, "nmae"},
		{"POST", "/v1/vms/web/kill?signal=NOPE", "", http.StatusBadRequest, "NOPE"},
		{"POST", "/v1/vms/web/stop?t=-3", "", http.StatusBadRequest, "-3"},
		{"POST", "/v1/vms/web/restart?t=x", "", http.StatusBadRequest, "stop timeout"},
		{"GET", "/v1/vms/web/logs?since=yesterday", "", http.StatusBadRequest, "since"},
		{"GET", "/v1/vms/web/logs?tail=-2", "", http.StatusBadRequest, "tail"},
		{"GET", "/v1/events?until=soon", "", http.StatusBadRequest, "until"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.target, strings.NewReader(tt.body))
			req = req.WithContext(context.WithValue(req.Context(), peerKey{}, 1000))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tt.wantCode {
				t.Fatalf("status %d (%s), want %d", w.Code, w.Body, tt.wantCode)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			if tt.wantMsg == "" {
				return
			}
			var e api.Error
			if err := json.NewDecoder(w.Body).Decode(&e); err != nil {
				t.Fatalf("decoding error body: %v", err)
			}
			if !strings.Contains(e.Message, tt.wantMsg) {
				t.Errorf("message %q does not contain %q", e.Message, tt.wantMsg)
			}
		})
	}
}

// fullConfig sets every field of api.VMConfig (checked by reflection, so
// a field added to the API is in the round trip).
func fullConfig(t *testing.T) api.VMConfig {
	t.Helper()
	c := api.VMConfig{
		Name: "web", Program: "/srv/hello", Image: "alpine:3", RootDir: "/srv/rootfs", Mode: options.ModeFull,
		Pull: "always", Insecure: true, DiskMiB: 2048,
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}, Env: []string{"A=1", "B=2"},
		WorkingDir: "/srv", User: "1000:1000", MemoryMiB: 512, CPUs: 2, Kernel: "/boot/vmlinuz",
		Accel:          string(vmm.AccelKVM),
		Ulimits:        []api.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}, {Name: "nproc", Soft: 10, Hard: 20}},
		Restart:        api.RestartPolicy{Name: options.RestartOnFailure, MaxRetries: 5},
		AutoRemove:     true,
		Log:            api.LogConfig{MaxSize: 4 << 20, MaxFiles: 7},
		StopTimeout:    25,
		BootTimeout:    api.Duration(90 * time.Second),
		Unconfined:     true,
		Cold:           true,
		ExtraHosts:     []string{"db:10.0.0.5", "host.kiln.internal:host-gateway"},
		Network:        "backend",
		IP:             "10.99.0.10",
		NetworkAliases: []string{"db", "db.internal"},
		Ports:          []api.PortMapping{{HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80, Protocol: "tcp"}, {GuestPort: 53, Protocol: "udp"}},
		Mounts:         []api.Mount{{Type: "volume", Source: "data", Target: "/data"}, {Type: "bind", Source: "/srv", Target: "/srv", ReadOnly: true}, {Type: "volume", Target: "/scratch", Anonymous: true}},
		Healthcheck: &api.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: api.Duration(time.Second),
			Timeout: api.Duration(2 * time.Second), StartPeriod: api.Duration(3 * time.Second), Retries: 4},
		HealthOnFailure: options.OnFailureKill,
		Labels:          map[string]string{"tier": "front", "com.example.owner": "ops"},
	}
	v := reflect.ValueOf(c)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("fullConfig leaves api.VMConfig.%s zero: set it", v.Type().Field(i).Name)
		}
	}
	return c
}

func TestConvertRoundTrip(t *testing.T) {
	in := fullConfig(t)
	spec := vm.Spec{VMConfig: in}
	opts := supervisor.OptionsOf(&spec.VMConfig)
	if opts.StopGrace != 25*time.Second || opts.Restart.MaxRetries != 5 || opts.Log.MaxFiles != 7 || opts.HealthOnFailure != options.OnFailureKill {
		t.Errorf("OptionsOf: %+v", opts)
	}
	spec.ImageID = "sha256:abc"
	spec.ExposedPorts = []string{"80/tcp"}
	created := time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
	rec := state.VM{
		ID: "abcdef0123", Name: "web", Created: created, Desired: state.DesiredRunning, Status: state.StatusRunning,
		PID: 321, ExitCode: 3, Error: "oops", StartedAt: created.Add(time.Second), FinishedAt: created.Add(time.Minute),
		RestartCount: 4, BootUptime: 0.25,
	}
	resolved := []network.PortMapping{{HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80, Protocol: "tcp"}, {HostIP: "0.0.0.0", HostPort: 40001, GuestPort: 53, Protocol: "udp"}}
	out := toAPI(&supervisor.View{Record: rec, Spec: spec, Options: opts, Dir: "/var/lib/kiln/vms/abcdef0123", Accel: vmm.AccelTCG, Kernel: "/k", Ports: resolved})
	if !reflect.DeepEqual(out.Config, in) {
		t.Errorf("toAPI(c).Config =\n %+v\nwant\n %+v", out.Config, in)
	}
	want := api.VM{
		ID: rec.ID, Name: rec.Name, Created: created, Config: in, Desired: state.DesiredRunning,
		Dir: "/var/lib/kiln/vms/abcdef0123", Accel: "tcg", Kernel: "/k", ImageID: "sha256:abc", ExposedPorts: []string{"80/tcp"},
		Ports: []api.PortMapping{{HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80, Protocol: "tcp"}, {HostIP: "0.0.0.0", HostPort: 40001, GuestPort: 53, Protocol: "udp"}},
		State: api.VMState{
			Status: state.StatusRunning, Running: true, PID: 321, ExitCode: 3, Error: "oops",
			StartedAt: rec.StartedAt, FinishedAt: rec.FinishedAt, RestartCount: 4, BootUptime: 0.25,
		},
	}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("toAPI =\n %+v\nwant\n %+v", out, want)
	}
}

func TestConvertZeroConfig(t *testing.T) {
	spec := vm.Spec{}
	opts := supervisor.OptionsOf(&spec.VMConfig)
	if opts.StopGrace != 0 || spec.BootTimeout != 0 || spec.Ulimits != nil {
		t.Errorf("zero request: StopGrace %v BootTimeout %v Ulimits %v; want zero values for the runtime's defaults", opts.StopGrace, spec.BootTimeout, spec.Ulimits)
	}
	out := toAPI(&supervisor.View{Spec: spec, Options: opts})
	if !reflect.DeepEqual(out.Config, api.VMConfig{}) {
		t.Errorf("toAPI(zero).Config = %+v, want zero", out.Config)
	}
}

func TestToAPIRunning(t *testing.T) {
	for status, want := range map[string]bool{
		state.StatusCreated: false, state.StatusStarting: false, state.StatusRunning: true,
		state.StatusStopping: true, state.StatusRestarting: false, state.StatusExited: false, state.StatusDead: false,
	} {
		t.Run(status, func(t *testing.T) {
			out := toAPI(&supervisor.View{Record: state.VM{Status: status}})
			if out.State.Running != want || out.State.Status != status {
				t.Errorf("status %s: Running = %v, want %v", status, out.State.Running, want)
			}
		})
	}
}

func TestEventToAPI(t *testing.T) {
	when := time.Date(2024, 3, 4, 5, 6, 7, 8, time.UTC)
	tests := []struct {
		attrs string
		want  map[string]string
	}{
		{"", nil},
		{"exitCode=3,signal=9", map[string]string{"exitCode": "3", "signal": "9"}},
		{"exitCode=0", map[string]string{"exitCode": "0"}},
		{"error=a=b", map[string]string{"error": "a=b"}},
		{"flag", map[string]string{"flag": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.attrs, func(t *testing.T) {
			got := eventToAPI(state.Event{Seq: 9, Time: when, VMID: "abc", Name: "web", Action: "died", Attrs: tt.attrs})
			want := api.Event{Time: when, ID: "abc", Name: "web", Action: "died", Attrs: tt.want}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("eventToAPI = %+v, want %+v", got, want)
			}
		})
	}
}

// CheckConfig judges a request as the daemon would, without changing it,
// and without the state the supervisor adds at create (a bridge lease).
func TestCheckConfig(t *testing.T) {
	for _, c := range []api.VMConfig{
		{Image: "alpine"},
		{Image: "alpine", Network: "mynet", IP: "10.88.0.5"},
		{Program: "/bin/true", Mounts: []api.Mount{{Type: options.MountVolume, Source: "data", Target: "/data/"}}},
	} {
		before := fmt.Sprintf("%+v", c)
		if err := CheckConfig(c); err != nil {
			t.Errorf("CheckConfig(%s): %v", before, err)
		}
		if after := fmt.Sprintf("%+v", c); after != before {
			t.Errorf("CheckConfig changed its request: %s, was %s", after, before)
		}
	}
	for _, tc := range []struct {
		c    api.VMConfig
		want string
	}{
		{api.VMConfig{Image: "UP:per:case"}, `invalid image reference "UP:per:case"`},
		{api.VMConfig{Image: "alpine", Pull: "sometimes"}, `invalid pull policy "sometimes"`},
		{api.VMConfig{Image: "alpine", IP: "10.88.0.5"}, "--ip needs a bridge network"},
		{api.VMConfig{Program: "/bin/true", CPUs: -1}, "invalid cpus -1"},
	} {
		err := CheckConfig(tc.c)
		if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckConfig(%+v) = %v, want an invalid-argument error with %q", tc.c, err, tc.want)
		}
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"sleep 100":          "sleep 100",
		"x\x1b[2J\x07y":      "x?[2J?y",
		"tab\there\nnewline": "tab?here?newline",
		"bad\xffutf8":        "bad?utf8",
		"héllo":              "héllo",
	} {
		if got := printable(in, 100); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
	if got := printable("abcdef", 3); got != "abc" {
		t.Errorf("printable bounded to 3: %q", got)
	}
}

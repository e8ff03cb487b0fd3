package dockerapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
)

// noDaemon is the Docker API of a kiln daemon that is not there: a request
// that reaches for the daemon fails with 500.
func noDaemon() http.Handler {
	return New(client.New("/nonexistent.sock"), Info{Version: "x"}, nil).Handler()
}

// serve runs one request through h.
func serve(h http.Handler, method, target, body string) *httptest.ResponseRecorder {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// message is the message of docker's error body, failing the test when
// the body is not that shape.
func message(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("error answer's Content-Type %q, want application/json", ct)
	}
	var e struct {
		Message *string `json:"message"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Message == nil {
		t.Fatalf("error body %q is not docker's {\"message\": ...} (%v)", w.Body, err)
	}
	return *e.Message
}

func TestPing(t *testing.T) {
	h := noDaemon()
	for _, target := range []string{"/_ping", "/v1.41/_ping", "/v1.24/_ping", "/v1.30/_ping"} {
		w := serve(h, http.MethodGet, target, "")
		if w.Code != http.StatusOK || w.Body.String() != "OK" {
			t.Errorf("GET %s: %d %q, want 200 OK", target, w.Code, w.Body)
		}
		if v := w.Header().Get("Api-Version"); v != "1.41" {
			t.Errorf("GET %s: Api-Version %q, want 1.41", target, v)
		}
		if v := w.Header().Get("Server"); v != "kiln/x (linux)" {
			t.Errorf("GET %s: Server %q", target, v)
		}
	}
	w := serve(h, http.MethodHead, "/_ping", "")
	if w.Code != http.StatusOK || w.Body.Len() != 0 {
		t.Errorf("HEAD /_ping: %d with body %q, want 200 and no body", w.Code, w.Body)
	}
	if w.Header().Get("Api-Version") != "1.41" {
		t.Errorf("HEAD /_ping: no Api-Version")
	}
}

func TestAPIVersions(t *testing.T) {
	h := noDaemon()
	w := serve(h, http.MethodGet, "/v1.99/_ping", "")
	if w.Code != http.StatusBadRequest {
		t.Fatalf("/v1.99/_ping: %d, want 400", w.Code)
	}
	if got, want := message(t, w), "client version 1.99 is too new. Maximum supported API version is 1.41"; got != want {
		t.Errorf("/v1.99/_ping: %q, want %q", got, want)
	}
	// 1.100 is a version after 1.99, not 1.10.
	w = serve(h, http.MethodGet, "/v1.100/_ping", "")
	if w.Code != http.StatusBadRequest || !strings.Contains(message(t, w), "too new") {
		t.Errorf("/v1.100/_ping: %d %q, want 400 too new", w.Code, w.Body)
	}
	w = serve(h, http.MethodGet, "/v1.12/_ping", "")
	if w.Code != http.StatusBadRequest {
		t.Fatalf("/v1.12/_ping: %d, want 400", w.Code)
	}
	if msg := message(t, w); !strings.Contains(msg, "client version 1.12 is too old") || !strings.Contains(msg, "1.24") {
		t.Errorf("/v1.12/_ping: %q, want too old naming the minimum 1.24", msg)
	}
	w = serve(h, http.MethodGet, "/v1.41/no/such/route", "")
	if w.Code != http.StatusNotFound {
		t.Fatalf("unknown route: %d, want 404", w.Code)
	}
	if msg := message(t, w); !strings.Contains(msg, "/no/such/route") {
		t.Errorf("unknown route: %q does not name the path", msg)
	}
	w = serve(h, http.MethodGet, "/v1.41/plugins", "")
	if w.Code != http.StatusOK || strings.TrimSpace(w.Body.String()) != "[]" {
		t.Errorf("GET /plugins: %d %q, want 200 []", w.Code, w.Body)
	}
}

// fakeKiln serves a few routes of kiln's API on a unix socket, from vms
// and images; calls counts the requests it gets.
type fakeKiln struct {
	vms    []api.VM
	images map[string]api.Image
	calls  atomic.Int64
}

func (f *fakeKiln) start(t *testing.T) *client.Client {
	t.Helper()
	mux := http.NewServeMux()
	notFound := func(w http.ResponseWriter, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(api.Error{Message: msg})
	}
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(f.vms)
	})
	mux.HandleFunc("GET /v1/vms/{ref}", func(w http.ResponseWriter, r *http.Request) {
		ref := r.PathValue("ref")
		for _, v := range f.vms {
			if v.ID == ref || v.Name == ref {
				_ = json.NewEncoder(w).Encode(v)
				return
			}
		}
		notFound(w, "no such VM: "+ref)
	})
	mux.HandleFunc("GET /v1/images/inspect", func(w http.ResponseWriter, r *http.Request) {
		img, ok := f.images[r.URL.Query().Get("ref")]
		if !ok {
			notFound(w, "no such image")
			return
		}
		_ = json.NewEncoder(w).Encode(img)
	})
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode([]api.Volume{})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the fake kiln daemon got an unexpected %s %s", r.Method, r.URL)
		w.WriteHeader(http.StatusNotImplemented)
	})
	sock := filepath.Join(t.TempDir(), "kiln.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		mux.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return client.New(sock)
}

var t0 = time.Date(2024, 3, 4, 5, 6, 7, 0, time.UTC)

// twoVMs is a kiln daemon's list, oldest first: web runs with a label and
// a published port; db, made after it, exited with code 3.
func twoVMs() *fakeKiln {
	web := api.VM{
		ID: strings.Repeat("a1", 32), Name: "web", Created: t0,
		Config: api.VMConfig{
			Name: "web", Image: "nginx:1", Env: []string{"A=vm"}, Labels: map[string]string{"tier": "front"},
			Ports: []api.PortMapping{{GuestPort: 80, Protocol: "tcp"}},
		},
		State:        api.VMState{Status: "running", Running: true, PID: 42, StartedAt: t0.Add(time.Minute)},
		ImageID:      "sha256:nginx",
		ExposedPorts: []string{"80/tcp"},
		Ports:        []api.PortMapping{{HostIP: "0.0.0.0", HostPort: 40001, GuestPort: 80, Protocol: "tcp"}},
	}
	db := api.VM{
		ID: strings.Repeat("b2", 32), Name: "db", Created: t0.Add(time.Hour),
		Config: api.VMConfig{Name: "db", Image: "postgres:16", Ports: []api.PortMapping{{GuestPort: 5432, Protocol: "tcp", HostPort: 5432}}},
		State: api.VMState{
			Status: "exited", ExitCode: 3, StartedAt: t0.Add(time.Hour + time.Minute), FinishedAt: t0.Add(2 * time.Hour),
		},
		ImageID: "sha256:postgres",
	}
	return &fakeKiln{
		vms: []api.VM{web, db},
		images: map[string]api.Image{
			"sha256:nginx": {ID: "sha256:nginx", RepoTags: []string{"docker.io/library/nginx:1"}, Config: api.ImageConfig{
				Cmd: []string{"nginx", "-g", "daemon off;"}, Env: []string{"PATH=/usr/bin", "A=img"},
				Labels: map[string]string{"tier": "back", "maintainer": "kiln"},
			}},
			"sha256:postgres": {ID: "sha256:postgres", Config: api.ImageConfig{Cmd: []string{"postgres"}}},
		},
	}
}

// Requests refused for what they ask, before the daemon is asked: 400
// (or 404) whether or not a daemon is there, and not one request to it.
func TestRefusedBeforeTheDaemon(t *testing.T) {
	tests := []struct {
		method, target, body string
		code                 int
		msg                  string
	}{
		{"POST", "/v1.41/containers/create?name=web", `{"Image":"alpine","HostConfig":{"Privileged":true}}`, 400, "Privileged"},
		{"POST", "/containers/create", `{"Image":"alpine","HostConfig":{"NetworkMode":"host"}}`, 400, "NetworkMode host"},
		{"POST", "/containers/create", `{"Image":"alpine","Tty":true}`, 400, "Tty"},
		{"POST", "/containers/create", `{"Image":`, 400, "malformed JSON"},
		{"POST", "/containers/create", `{"Image":"` + strings.Repeat("a", 1<<20) + `"}`, 400, "over"},
		{"POST", "/containers/create", `{"Cmd":["true"]}`, 400, "Image is required"},
		{"POST", "/containers/create", ``, 400, "no container config"},
		{"GET", "/v1.41/containers/json?filters=" + url.QueryEscape(`{"bogus":["x"]}`), "", 400, "bogus"},
		{"GET", "/containers/json?filters=notjson", "", 400, "invalid filters"},
		{"GET", "/containers/json?limit=many", "", 400, "limit"},
		{"POST", "/containers/web/wait?condition=later", "", 400, "condition"},
		{"GET", "/containers/web/logs", "", 400, "stdout or stderr"},
		{"GET", "/containers/web/logs?stdout=1&since=yesterday", "", 400, "since"},
		{"POST", "/containers/web/stop?t=soon", "", 400, "soon"},
		{"DELETE", "/containers/web?link=1", "", 400, "links"},
		{"POST", "/containers/web/attach?stdin=1&stdout=1", "", 400, "stdin"},
		{"POST", "/containers/web/exec", `{}`, 400, "Cmd"},
		{"POST", "/containers/web/exec", `{"Cmd":["sh"],"Privileged":true}`, 400, "Privileged"},
		{"GET", "/exec/" + strings.Repeat("0", 64) + "/json", "", 404, "No such exec instance"},
		{"GET", "/volumes?filters=" + url.QueryEscape(`{"bogus":["x"]}`), "", 400, "bogus"},
		{"GET", "/networks?filters=" + url.QueryEscape(`{"bogus":["x"]}`), "", 400, "bogus"},
		{"GET", "/events?until=soon", "", 400, "until"},
	}
	fake := &fakeKiln{}
	withFake := New(fake.start(t), Info{Version: "x"}, nil).Handler()
	for _, h := range []struct {
		name string
		h    http.Handler
	}{{"no daemon", noDaemon()}, {"fake daemon", withFake}} {
		for _, tt := range tests {
			before := fake.calls.Load()
			w := serve(h.h, tt.method, tt.target, tt.body)
			target := tt.target
			if len(target) > 80 {
				target = target[:80] + "..."
			}
			if w.Code != tt.code {
				t.Errorf("%s: %s %s: %d %q, want %d", h.name, tt.method, target, w.Code, w.Body, tt.code)
				continue
			}
			if msg := message(t, w); !strings.Contains(msg, tt.msg) {
				t.Errorf("%s: %s %s: message %q does not name %q", h.name, tt.method, target, msg, tt.msg)
			}
			if n := fake.calls.Load() - before; n != 0 {
				t.Errorf("%s: %s %s: %d requests reached the kiln daemon", h.name, tt.method, target, n)
			}
		}
	}
}

// The requests above are refused for their content, not for the missing
// daemon: sound ones reach for it, and fail without it.
func TestNoDaemonIsNotABadRequest(t *testing.T) {
	h := noDaemon()
	for _, tt := range []struct{ method, target, body string }{
		{"GET", "/containers/json", ""},
		{"GET", "/containers/json?limit=2&filters=" + url.QueryEscape(`{"label":["tier=front"]}`), ""},
		{"POST", "/containers/create?name=web", `{"Image":"alpine","HostConfig":{"CapAdd":["NET_ADMIN"]}}`},
		{"GET", "/containers/web/json", ""},
	} {
		w := serve(h, tt.method, tt.target, tt.body)
		if w.Code != http.StatusInternalServerError {
			t.Errorf("%s %s: %d %q, want 500", tt.method, tt.target, w.Code, w.Body)
			continue
		}
		if msg := message(t, w); !strings.Contains(msg, client.ErrNoDaemon.Error()) {
			t.Errorf("%s %s: %q does not say the daemon is missing", tt.method, tt.target, msg)
		}
	}
}

// list runs GET /containers/json with query q against the two VMs.
func list(t *testing.T, h http.Handler, q url.Values) []container.Summary {
	t.Helper()
	w := serve(h, http.MethodGet, "/v1.41/containers/json?"+q.Encode(), "")
	if w.Code != http.StatusOK {
		t.Fatalf("GET /containers/json?%s: %d %s", q.Encode(), w.Code, w.Body)
	}
	var out []container.Summary
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
		t.Fatalf("list answer %s: %v", w.Body, err)
	}
	return out
}

func names(ss []container.Summary) []string {
	out := []string{}
	for _, s := range ss {
		out = append(out, strings.Join(s.Names, ","))
	}
	return out
}

func TestListContainers(t *testing.T) {
	fake := twoVMs()
	h := New(fake.start(t), Info{Version: "x"}, nil).Handler()
	filter := func(f string) url.Values { return url.Values{"filters": {f}} }
	tests := []struct {
		name string
		q    url.Values
		want []string
	}{
		{"default: running only", nil, []string{"/web"}},
		{"all, newest first", url.Values{"all": {"1"}}, []string{"/db", "/web"}},
		{"all=true", url.Values{"all": {"true"}}, []string{"/db", "/web"}},
		{"limit", url.Values{"all": {"1"}, "limit": {"1"}}, []string{"/db"}},
		{"label key=value", filter(`{"label":["tier=front"]}`), []string{"/web"}},
		{"label key", filter(`{"label":["tier"]}`), []string{"/web"}},
		{"label other value", filter(`{"label":["tier=back"]}`), []string{}},
		{"label from the image", filter(`{"label":["maintainer=kiln"]}`), []string{"/web"}},
		{"label, docker's newer filter shape", filter(`{"label":{"tier=front":true}}`), []string{"/web"}},
		{"status exited", filter(`{"status":["exited"]}`), []string{"/db"}},
		{"status running", filter(`{"status":["running"]}`), []string{"/web"}},
		{"exited 3", filter(`{"exited":["3"]}`), []string{"/db"}},
		{"exited 0", filter(`{"exited":["0"]}`), []string{}},
		{"name", filter(`{"name":["/db"]}`), []string{"/db"}},
		{"id prefix", filter(`{"id":["b2b2b2"]}`), []string{"/db"}},
		{"ancestor", filter(`{"ancestor":["nginx:1"]}`), []string{"/web"}},
		{"network", filter(`{"network":["bridge"]}`), []string{"/db", "/web"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := names(list(t, h, tt.q)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("listed %q, want %q", got, tt.want)
			}
		})
	}

	t.Run("summary fields", func(t *testing.T) {
		out := list(t, h, url.Values{"all": {"1"}})
		if len(out) != 2 {
			t.Fatalf("listed %d", len(out))
		}
		db, web := out[0], out[1]
		if web.ID != fake.vms[0].ID || web.State != "running" || web.Image != "nginx:1" || web.ImageID != "sha256:nginx" {
			t.Errorf("web: ID %s State %s Image %s ImageID %s", web.ID, web.State, web.Image, web.ImageID)
		}
		if !strings.HasPrefix(web.Status, "Up ") {
			t.Errorf("web: Status %q, want Up ...", web.Status)
		}
		if web.Command != "nginx -g daemon off;" {
			t.Errorf("web: Command %q, want the image's", web.Command)
		}
		if web.Created != t0.Unix() {
			t.Errorf("web: Created %d, want %d", web.Created, t0.Unix())
		}
		if want := []container.Port{{IP: "0.0.0.0", PrivatePort: 80, PublicPort: 40001, Type: "tcp"}}; !reflect.DeepEqual(web.Ports, want) {
			t.Errorf("web: Ports %+v, want %+v", web.Ports, want)
		}
		// The image's labels under the VM's own, as docker merges them.
		if want := map[string]string{"tier": "front", "maintainer": "kiln"}; !reflect.DeepEqual(web.Labels, want) {
			t.Errorf("web: Labels %v, want %v", web.Labels, want)
		}
		if web.HostConfig.NetworkMode != "bridge" || web.NetworkSettings == nil || web.NetworkSettings.Networks["bridge"] == nil {
			t.Errorf("web: not on bridge: %q %+v", web.HostConfig.NetworkMode, web.NetworkSettings)
		}
		if db.State != "exited" || !strings.HasPrefix(db.Status, "Exited (3) ") {
			t.Errorf("db: State %s Status %q", db.State, db.Status)
		}
		// A stopped VM's port is shown unpublished, as docker shows it.
		if want := []container.Port{{PrivatePort: 5432, Type: "tcp"}}; !reflect.DeepEqual(db.Ports, want) {
			t.Errorf("db: Ports %+v, want %+v", db.Ports, want)
		}
		if db.Labels == nil || len(db.Labels) != 0 {
			t.Errorf("db: Labels %#v, want {}", db.Labels)
		}
	})
}

// inspect runs GET /containers/{ref}/json.
func inspect(t *testing.T, h http.Handler, ref string) container.InspectResponse {
	t.Helper()
	w := serve(h, http.MethodGet, "/v1.41/containers/"+ref+"/json", "")
	if w.Code != http.StatusOK {
		t.Fatalf("inspect %s: %d %s", ref, w.Code, w.Body)
	}
	var out container.InspectResponse
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
		t.Fatalf("inspect answer %s: %v", w.Body, err)
	}
	return out
}

func TestInspectContainer(t *testing.T) {
	fake := twoVMs()
	h := New(fake.start(t), Info{Version: "x"}, nil).Handler()

	web := inspect(t, h, "web")
	if web.ContainerJSONBase == nil || web.State == nil || web.Config == nil || web.NetworkSettings == nil || web.HostConfig == nil {
		t.Fatalf("inspect web: parts missing: %+v", web)
	}
	if web.ID != fake.vms[0].ID || web.Name != "/web" || web.Image != "sha256:nginx" {
		t.Errorf("ID %s Name %s Image %s", web.ID, web.Name, web.Image)
	}
	if web.State.Status != "running" || !web.State.Running || web.State.Pid != 42 || web.State.ExitCode != 0 {
		t.Errorf("State %+v", web.State)
	}
	if web.State.StartedAt != "2024-03-04T05:07:07Z" || web.State.FinishedAt != "0001-01-01T00:00:00Z" {
		t.Errorf("StartedAt %s FinishedAt %s", web.State.StartedAt, web.State.FinishedAt)
	}
	if web.Path != "nginx" || !reflect.DeepEqual(web.Args, []string{"-g", "daemon off;"}) {
		t.Errorf("Path %q Args %q, want the image's command", web.Path, web.Args)
	}
	if want := (nat.PortMap{"80/tcp": {{HostIP: "0.0.0.0", HostPort: "40001"}}}); !reflect.DeepEqual(web.NetworkSettings.Ports, want) {
		t.Errorf("NetworkSettings.Ports %v, want %v", web.NetworkSettings.Ports, want)
	}
	// The VM's labels, then the image's where the VM has none of that key.
	if want := map[string]string{"tier": "front", "maintainer": "kiln"}; !reflect.DeepEqual(web.Config.Labels, want) {
		t.Errorf("Config.Labels %v, want %v", web.Config.Labels, want)
	}
	if want := []string{"PATH=/usr/bin", "A=vm"}; !reflect.DeepEqual(web.Config.Env, want) {
		t.Errorf("Config.Env %q, want %q", web.Config.Env, want)
	}
	if _, ok := web.Config.ExposedPorts["80/tcp"]; !ok {
		t.Errorf("Config.ExposedPorts %v lacks 80/tcp", web.Config.ExposedPorts)
	}
	if want := (nat.PortMap{"80/tcp": {{}}}); !reflect.DeepEqual(web.HostConfig.PortBindings, want) {
		t.Errorf("HostConfig.PortBindings %v, want %v (an ephemeral port)", web.HostConfig.PortBindings, want)
	}
	if web.HostConfig.RestartPolicy.Name != container.RestartPolicyDisabled || web.HostConfig.NetworkMode != "bridge" {
		t.Errorf("HostConfig RestartPolicy %q NetworkMode %q", web.HostConfig.RestartPolicy.Name, web.HostConfig.NetworkMode)
	}
	if web.Config.StopTimeout == nil || *web.Config.StopTimeout != 10 {
		t.Errorf("Config.StopTimeout %v, want kiln's default 10", web.Config.StopTimeout)
	}

	db := inspect(t, h, fake.vms[1].ID)
	if db.Name != "/db" || db.State.Status != "exited" || db.State.Running || db.State.ExitCode != 3 {
		t.Errorf("db: Name %s State %+v", db.Name, db.State)
	}
	if want := (nat.PortMap{"5432/tcp": nil}); !reflect.DeepEqual(db.NetworkSettings.Ports, want) {
		t.Errorf("db: NetworkSettings.Ports %v, want %v", db.NetworkSettings.Ports, want)
	}
	if want := (nat.PortMap{"5432/tcp": {{HostPort: "5432"}}}); !reflect.DeepEqual(db.HostConfig.PortBindings, want) {
		t.Errorf("db: HostConfig.PortBindings %v, want %v", db.HostConfig.PortBindings, want)
	}
	if len(db.Config.Labels) != 0 || db.Config.Labels == nil {
		t.Errorf("db: Config.Labels %#v, want {}", db.Config.Labels)
	}

	w := serve(h, http.MethodGet, "/containers/nope/json", "")
	if w.Code != http.StatusNotFound {
		t.Fatalf("inspect nope: %d, want 404", w.Code)
	}
	if msg := message(t, w); !strings.HasPrefix(msg, "No such container: nope") {
		t.Errorf("inspect nope: %q, want docker's No such container", msg)
	}
}

func TestExecTableBound(t *testing.T) {
	tab := newExecTable()
	now := time.Now()
	for i := range maxExecs {
		if err := tab.add(&execInst{id: fmt.Sprintf("e%d", i), made: now}); err != nil {
			t.Fatalf("add %d: %v", i, err)
		}
	}
	err := tab.add(&execInst{id: "one-too-many", made: now})
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("add past %d: %v, want ErrUnavailable", maxExecs, err)
	}
	if statusOf(err) != http.StatusServiceUnavailable {
		t.Errorf("a full table answers %d, want 503", statusOf(err))
	}
	if _, err := tab.get("one-too-many"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the refused instance is stored: %v", err)
	}

	// Instances that ended more than execKeep ago, or were made that long
	// ago and never started, go; one that ended lately and one started
	// long ago and still running stay.
	var endedLong, endedLately, neverStarted, running []string
	i := 0
	for id, e := range tab.m {
		switch i {
		case 0, 1, 2:
			e.started, e.ended = true, now.Add(-execKeep-time.Second)
			endedLong = append(endedLong, id)
		case 3:
			e.started, e.ended = true, now.Add(-time.Second)
			endedLately = append(endedLately, id)
		case 4:
			e.made = now.Add(-execKeep - time.Second)
			neverStarted = append(neverStarted, id)
		case 5:
			e.made, e.started, e.running = now.Add(-2*execKeep), true, true
			running = append(running, id)
		}
		i++
	}
	if err := tab.add(&execInst{id: "fits", made: now}); err != nil {
		t.Fatalf("add after instances went stale: %v", err)
	}
	if got, want := len(tab.m), maxExecs-4+1; got != want {
		t.Errorf("%d instances stored, want %d", got, want)
	}
	for _, id := range append(endedLong, neverStarted...) {
		if _, err := tab.get(id); err == nil {
			t.Errorf("stale instance %s kept", id)
		}
	}
	for _, id := range append(append(endedLately, running...), "fits") {
		if _, err := tab.get(id); err != nil {
			t.Errorf("instance %s dropped: %v", id, err)
		}
	}
}

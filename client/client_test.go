package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/unixsock"
)

// serve runs h on a unix socket in a temp dir and returns a client for it.
func serve(t *testing.T, h http.Handler) *client.Client {
	t.Helper()
	return serveAt(t, filepath.Join(t.TempDir(), "kiln.sock"), h)
}

func serveAt(t *testing.T, sock string, h http.Handler) *client.Client {
	t.Helper()
	var l net.Listener
	err := unixsock.WithPath(sock, func(p string) error {
		var err error
		l, err = net.Listen("unix", p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return client.New(sock)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		body     string
		sentinel error // nil: none of the four
		wantMsg  string
	}{
		{"not found", 404, `{"message":"no such VM: x"}`, client.ErrNotFound, "no such VM: x"},
		{"conflict", 409, `{"message":"the name \"x\" is already in use"}`, client.ErrConflict, `the name "x" is already in use`},
		{"bad request", 400, `{"message":"invalid signal \"NOPE\""}`, client.ErrInvalidArgument, `invalid signal "NOPE"`},
		{"too large", 413, `{"message":"too big"}`, client.ErrInvalidArgument, "too big"},
		{"unavailable", 503, `{"message":"no KVM"}`, client.ErrUnavailable, "no KVM"},
		{"internal", 500, `{"message":"disk on fire"}`, nil, "disk on fire"},
		{"forbidden", 403, `{"message":"uid 5 may not use this kiln daemon"}`, nil, "uid 5 may not use this kiln daemon"},
		{"not JSON", 502, `<html>bad gateway</html>`, nil, "daemon answered 502 Bad Gateway"},
		{"empty message", 404, `{"message":""}`, client.ErrNotFound, "daemon answered 404 Not Found"},
		{"empty body", 409, ``, client.ErrConflict, "daemon answered 409 Conflict"},
	}
	sentinels := []error{client.ErrNotFound, client.ErrConflict, client.ErrInvalidArgument, client.ErrUnavailable, client.ErrNoDaemon}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			// Both a call that decodes a body and one that does not.
			_, errInspect := c.Inspect(context.Background(), "x")
			errStart := c.Start(context.Background(), "x")
			for name, err := range map[string]error{"Inspect": errInspect, "Start": errStart} {
				if err == nil {
					t.Fatalf("%s: no error", name)
				}
				if err.Error() != tt.wantMsg {
					t.Errorf("%s: Error() = %q, want %q", name, err, tt.wantMsg)
				}
				var ce *client.Error
				if !errors.As(err, &ce) || ce.Status != tt.status {
					t.Errorf("%s: error %#v is not a *client.Error with status %d", name, err, tt.status)
				}
				for _, s := range sentinels {
					if got, want := errors.Is(err, s), s == tt.sentinel; got != want {
						t.Errorf("%s: errors.Is(err, %v) = %v, want %v", name, s, got, want)
					}
				}
			}
		})
	}
}

func TestInspect(t *testing.T) {
	want := api.VM{
		ID: "abcdef", Name: "web", Created: time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC), Desired: "running",
		Config: api.VMConfig{Name: "web", Image: "alpine", Cmd: []string{"sh"}, BootTimeout: api.Duration(time.Minute), Restart: api.RestartPolicy{Name: "always"}},
		State:  api.VMState{Status: "running", Running: true, PID: 42, StartedAt: time.Date(2024, 1, 2, 3, 4, 6, 0, time.UTC)},
		Dir:    "/var/lib/kiln/vms/abcdef", Accel: "kvm", ExposedPorts: []string{"80/tcp"},
	}
	seen := make(chan string, 1)
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Method + " " + r.URL.EscapedPath()
		writeJSON(w, http.StatusOK, want)
	}))
	got, err := c.Inspect(context.Background(), "we b/1")
	if err != nil {
		t.Fatal(err)
	}
	if req := <-seen; req != "GET /v1/vms/we%20b%2F1" {
		t.Errorf("request %s, want GET /v1/vms/we%%20b%%2F1 (the ref escaped as one segment)", req)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Inspect =\n %+v\nwant\n %+v", got, want)
	}
}

func TestInspectBadResponse(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"id": `)
	}))
	if _, err := c.Inspect(context.Background(), "x"); err == nil || !strings.Contains(err.Error(), "decoding response") {
		t.Fatalf("Inspect of a torn body = %v, want a decoding error", err)
	}
}

func TestLogs(t *testing.T) {
	t0 := time.Date(2024, 2, 3, 4, 5, 6, 7, time.UTC)
	entries := []api.LogEntry{
		{Stream: "stdout", Time: t0, Line: "one\n"},
		{Stream: "stderr", Time: t0.Add(time.Second), Line: "two\n"},
		{Stream: "stdout", Time: t0.Add(2 * time.Second), Line: "three"},
	}
	ndjson := func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		for _, e := range entries {
			enc.Encode(e)
		}
	}
	tests := []struct {
		name      string
		opts      client.LogOptions
		wantQuery string
	}{
		{"all", client.LogOptions{Tail: -1}, ""},
		{"every option", client.LogOptions{Tail: 2, Follow: true, Since: "10m", Until: "2024-01-01T00:00:00Z"}, "follow=1&since=10m&tail=2&until=2024-01-01T00%3A00%3A00Z"},
		{"tail 0", client.LogOptions{Tail: 0}, "tail=0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := make(chan string, 1)
			c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen <- r.URL.Path + "?" + r.URL.Query().Encode()
				ndjson(w)
			}))
			var got []api.LogEntry
			err := c.Logs(context.Background(), "web", tt.opts, func(e api.LogEntry) error {
				got = append(got, e)
				return nil
			})
			if err != nil {
				t.Fatalf("Logs: %v", err)
			}
			if req := <-seen; req != "/v1/vms/web/logs?"+tt.wantQuery {
				t.Errorf("request %s, want /v1/vms/web/logs?%s", req, tt.wantQuery)
			}
			if !reflect.DeepEqual(got, entries) {
				t.Errorf("entries = %+v, want %+v", got, entries)
			}
		})
	}

	t.Run("fn error stops", func(t *testing.T) {
		c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { ndjson(w) }))
		stop := errors.New("enough")
		n := 0
		err := c.Logs(context.Background(), "web", client.LogOptions{Tail: -1}, func(api.LogEntry) error {
			n++
			if n == 2 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || n != 2 {
			t.Errorf("Logs = %v after %d entries, want fn's error after 2", err, n)
		}
	})

	t.Run("torn stream", func(t *testing.T) {
		c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ndjson(w)
			io.WriteString(w, `{"stream":"std`)
		}))
		n := 0
		err := c.Logs(context.Background(), "web", client.LogOptions{Tail: -1}, func(api.LogEntry) error { n++; return nil })
		if err == nil || n != 3 {
			t.Errorf("Logs of a torn stream = %v after %d entries, want an error after 3", err, n)
		}
	})

	t.Run("console", func(t *testing.T) {
		seen := make(chan string, 1)
		c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen <- r.URL.RawQuery
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "[    0.000000] Linux version\n{not json}\n")
		}))
		var got []api.LogEntry
		err := c.Logs(context.Background(), "web", client.LogOptions{Tail: -1, Console: true}, func(e api.LogEntry) error {
			got = append(got, e)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []api.LogEntry{{Stream: "console", Line: "[    0.000000] Linux version\n{not json}\n"}}
		if gotQuery := <-seen; gotQuery != "console=1" || !reflect.DeepEqual(got, want) {
			t.Errorf("console: query %q entries %+v, want console=1 and %+v", gotQuery, got, want)
		}
	})
}

func TestWaitRegisteredBeforeBody(t *testing.T) {
	release := make(chan struct{})
	var bodyWritten atomic.Bool
	seen := make(chan string, 1)
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Method + " ?" + r.URL.RawQuery
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		case <-time.After(time.Minute):
			// The client never released us: it must be waiting for the
			// body before calling registered. Answer so the test fails
			// instead of hanging.
		}
		bodyWritten.Store(true)
		json.NewEncoder(w).Encode(api.WaitResponse{ExitCode: 3, Error: "exited"})
	}))
	calls := 0
	resp, err := c.Wait(context.Background(), "web", true, func() {
		calls++
		if bodyWritten.Load() {
			t.Error("registered called after the body was written")
		}
		close(release)
	})
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if calls != 1 {
		t.Errorf("registered called %d times, want 1", calls)
	}
	if resp != (api.WaitResponse{ExitCode: 3, Error: "exited"}) {
		t.Errorf("Wait = %+v, want exit code 3", resp)
	}
	if req := <-seen; req != "POST ?condition=next-exit" {
		t.Errorf("request %s, want POST ?condition=next-exit", req)
	}
}

func TestWait(t *testing.T) {
	t.Run("not next", func(t *testing.T) {
		seen := make(chan string, 1)
		c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen <- r.URL.RawQuery
			writeJSON(w, http.StatusOK, api.WaitResponse{ExitCode: 0})
		}))
		resp, err := c.Wait(context.Background(), "web", false, nil)
		if gotQuery := <-seen; err != nil || resp.ExitCode != 0 || gotQuery != "" {
			t.Errorf("Wait = %+v, %v with query %q; want exit 0, no condition", resp, err, gotQuery)
		}
	})
	t.Run("error before registering", func(t *testing.T) {
		c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusNotFound, api.Error{Message: "no such VM: web"})
		}))
		called := false
		_, err := c.Wait(context.Background(), "web", true, func() { called = true })
		if !errors.Is(err, client.ErrNotFound) || called {
			t.Errorf("Wait = %v, registered called %v; want ErrNotFound and no call", err, called)
		}
	})
	t.Run("daemon gives up after registering", func(t *testing.T) {
		c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK) // and no body
		}))
		called := false
		_, err := c.Wait(context.Background(), "web", true, func() { called = true })
		if err == nil || !called || !strings.Contains(err.Error(), "web") {
			t.Errorf("Wait = %v, registered called %v; want an error naming the VM after the call", err, called)
		}
	})
}

func TestRunRemovesVMThatFailsToStart(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	var created api.VMConfig
	mux := http.NewServeMux()
	record := func(r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
	}
	mux.HandleFunc("POST /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("create Content-Type %q", ct)
		}
		mu.Lock()
		defer mu.Unlock()
		if err := json.NewDecoder(r.Body).Decode(&created); err != nil {
			t.Errorf("create body: %v", err)
		}
		writeJSON(w, http.StatusCreated, api.CreateResponse{ID: "abc123", Name: "web", Warnings: []string{"no KVM: using TCG"}})
	})
	mux.HandleFunc("POST /v1/vms/{ref}/start", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		writeJSON(w, http.StatusInternalServerError, api.Error{Message: "booting web: kernel panic"})
	})
	mux.HandleFunc("DELETE /v1/vms/{ref}", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		w.WriteHeader(http.StatusNoContent)
	})
	c := serve(t, mux)
	cfg := api.VMConfig{Name: "web", Image: "alpine", Cmd: []string{"true"}}
	resp, err := c.Run(context.Background(), cfg)
	if err == nil || err.Error() != "booting web: kernel panic" {
		t.Fatalf("Run = %v, want the start error", err)
	}
	if resp.ID != "abc123" || len(resp.Warnings) != 1 {
		t.Errorf("Run response %+v, want the create response", resp)
	}
	want := []string{"POST /v1/vms?", "POST /v1/vms/abc123/start?", "DELETE /v1/vms/abc123?force=1&v=1"}
	mu.Lock()
	defer mu.Unlock()
	if !reflect.DeepEqual(created, cfg) {
		t.Errorf("created with %+v, want %+v", created, cfg)
	}
	if !reflect.DeepEqual(calls, want) {
		t.Errorf("calls = %q, want %q", calls, want)
	}
}

func TestQueries(t *testing.T) {
	seen := make(chan string, 1)
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Method + " " + r.URL.Path + "?" + r.URL.RawQuery
		w.WriteHeader(http.StatusNoContent)
	}))
	grace := 12 * time.Second
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"stop", func() error { return c.Stop(ctx, "web", nil) }, "POST /v1/vms/web/stop?"},
		{"stop with grace", func() error { return c.Stop(ctx, "web", &grace) }, "POST /v1/vms/web/stop?t=12"},
		{"restart", func() error { return c.Restart(ctx, "web", &grace) }, "POST /v1/vms/web/restart?t=12"},
		{"kill", func() error { return c.Kill(ctx, "web", "HUP") }, "POST /v1/vms/web/kill?signal=HUP"},
		{"remove", func() error { return c.Remove(ctx, "web", client.RemoveOptions{}) }, "DELETE /v1/vms/web?"},
		{"remove force", func() error { return c.Remove(ctx, "web", client.RemoveOptions{Force: true}) }, "DELETE /v1/vms/web?force=1"},
		{"remove force volumes", func() error { return c.Remove(ctx, "web", client.RemoveOptions{Force: true, Volumes: true}) }, "DELETE /v1/vms/web?force=1&v=1"},
		{"ping", func() error { return c.Ping(ctx) }, "GET /v1/ping?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); err != nil {
				t.Fatal(err)
			}
			if got := <-seen; got != tt.want {
				t.Errorf("request %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNoDaemon(t *testing.T) {
	dir := t.TempDir()
	notSocket := filepath.Join(dir, "plain-file")
	if err := os.WriteFile(notSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, sock := range []string{filepath.Join(dir, "missing.sock"), notSocket} {
		t.Run(filepath.Base(sock), func(t *testing.T) {
			err := client.New(sock).Ping(context.Background())
			if !errors.Is(err, client.ErrNoDaemon) {
				t.Fatalf("Ping = %v, want ErrNoDaemon", err)
			}
			if !strings.Contains(err.Error(), sock) {
				t.Errorf("error %q does not name the socket", err)
			}
			for _, s := range []error{client.ErrNotFound, client.ErrUnavailable} {
				if errors.Is(err, s) {
					t.Errorf("error %q is also %v", err, s)
				}
			}
		})
	}
	t.Run("cancelled context is not ErrNoDaemon", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := client.New(filepath.Join(dir, "missing.sock")).Ping(ctx)
		if err == nil || errors.Is(err, client.ErrNoDaemon) {
			t.Errorf("Ping with a cancelled context = %v, want the context's error, not ErrNoDaemon", err)
		}
	})
}

// A socket under a deep root, past the 108-byte sockaddr limit, is still
// reached.
func TestLongSocketPath(t *testing.T) {
	dir := t.TempDir()
	for len(dir) <= unixsock.MaxPath {
		dir = filepath.Join(dir, strings.Repeat("d", 40))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "kiln.sock")
	c := serveAt(t, sock, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.Info{Version: "v1", VMs: 2})
	}))
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatalf("Info over a %d-byte socket path: %v", len(sock), err)
	}
	if info.VMs != 2 {
		t.Errorf("Info = %+v", info)
	}
}

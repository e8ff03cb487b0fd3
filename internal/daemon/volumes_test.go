package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/supervisor"
	"kiln.dev/kiln/internal/vm"
)

// TestVolumeEndpoints drives the volume API over a real supervisor and
// volume store (no VM runs): status codes, bodies, and the disk image.
func TestVolumeEndpoints(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		if _, err := exec.LookPath("/usr/sbin/mkfs.ext4"); err != nil {
			t.Skip("mkfs.ext4 not found: run scripts/setup (apt-get install e2fsprogs)")
		}
	}
	root := t.TempDir()
	db, err := state.Open(filepath.Join(root, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rt, err := vm.New(root)
	if err != nil {
		t.Fatal(err)
	}
	sup := supervisor.New(rt, db, slog.New(slog.DiscardHandler))
	defer sup.Close()
	d := &Daemon{uid: 1000, log: slog.New(slog.DiscardHandler), rt: rt, sup: sup}
	h := d.routes()
	do := func(method, target, body string, wantCode int, out any) string {
		t.Helper()
		req := httptest.NewRequest(method, target, strings.NewReader(body))
		req = req.WithContext(context.WithValue(req.Context(), peerKey{}, 1000))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != wantCode {
			t.Fatalf("%s %s: status %d (%s), want %d", method, target, w.Code, w.Body, wantCode)
		}
		if out != nil {
			if err := json.NewDecoder(w.Body).Decode(out); err != nil {
				t.Fatalf("%s %s: decoding: %v", method, target, err)
			}
		}
		return w.Body.String()
	}
	var v api.Volume
	do("POST", "/v1/volumes", `{"name":"pgdata","sizeMiB":64}`, http.StatusCreated, &v)
	if v.Name != "pgdata" || v.SizeMiB != 64 || v.Path != filepath.Join(root, "volumes", "pgdata", "disk.ext4") || v.UsedBytes <= 0 || v.UsedBytes >= 64<<20 {
		t.Errorf("created volume: %+v (want a sparse 64 MiB image)", v)
	}
	// As docker: creating it again gives it back; with another size it is
	// a conflict.
	var again api.Volume
	do("POST", "/v1/volumes", `{"name":"pgdata"}`, http.StatusCreated, &again)
	if again.Name != "pgdata" || again.SizeMiB != 64 || !again.Created.Equal(v.Created) {
		t.Errorf("created again: %+v, want the existing %+v", again, v)
	}
	do("POST", "/v1/volumes", `{"name":"pgdata","sizeMiB":64}`, http.StatusCreated, nil)
	if msg := do("POST", "/v1/volumes", `{"name":"pgdata","sizeMiB":128}`, http.StatusConflict, nil); !strings.Contains(msg, "volume pgdata already exists with size 64m, not 128m") {
		t.Errorf("duplicate of another size: %s", msg)
	}
	if msg := do("POST", "/v1/volumes", `{"name":"a/b"}`, http.StatusBadRequest, nil); !strings.Contains(msg, `invalid volume name \"a/b\"`) {
		t.Errorf("bad name: %s", msg)
	}
	if msg := do("POST", "/v1/volumes", `{"name":"x","sizeMiB":1}`, http.StatusBadRequest, nil); !strings.Contains(msg, "invalid volume size 1m") {
		t.Errorf("bad size: %s", msg)
	}
	do("POST", "/v1/volumes", `{"name":"other","sizeMiB":16}`, http.StatusCreated, nil)
	var list []api.Volume
	do("GET", "/v1/volumes", "", http.StatusOK, &list)
	if len(list) != 2 || list[0].Name != "other" || list[1].Name != "pgdata" {
		t.Errorf("list: %+v", list)
	}
	do("GET", "/v1/volumes/pgdata", "", http.StatusOK, &v)
	if v.Name != "pgdata" || len(v.UsedBy) != 0 || v.AttachedTo != "" {
		t.Errorf("inspect: %+v", v)
	}
	if msg := do("GET", "/v1/volumes/nope", "", http.StatusNotFound, nil); !strings.Contains(msg, "no such volume: nope") {
		t.Errorf("inspect missing: %s", msg)
	}
	do("DELETE", "/v1/volumes/pgdata", "", http.StatusNoContent, nil)
	do("DELETE", "/v1/volumes/pgdata", "", http.StatusNotFound, nil)
	var pr api.VolumePruneResponse
	do("POST", "/v1/volumes/prune", "", http.StatusOK, &pr)
	if len(pr.Removed) != 1 || pr.Removed[0] != "other" || pr.SpaceReclaimed <= 0 {
		t.Errorf("prune: %+v", pr)
	}
	do("GET", "/v1/volumes", "", http.StatusOK, &list)
	if len(list) != 0 {
		t.Errorf("after rm and prune: %+v", list)
	}
}

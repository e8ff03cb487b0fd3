package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
)

// The volume methods send what the API describes and read its answers.
func TestVolumeMethods(t *testing.T) {
	var got []string
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		var req api.VolumeCreateRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		got = append(got, "create "+req.Name)
		writeJSON(w, http.StatusCreated, api.Volume{Name: req.Name, SizeMiB: req.SizeMiB})
	})
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, []api.Volume{{Name: "a"}, {Name: "b"}})
	})
	mux.HandleFunc("GET /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("name") != "a.b" {
			writeJSON(w, http.StatusNotFound, api.Error{Message: "no such volume: " + r.PathValue("name")})
			return
		}
		writeJSON(w, http.StatusOK, api.Volume{Name: "a.b", UsedBy: []string{"web"}})
	})
	mux.HandleFunc("DELETE /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusConflict, api.Error{Message: "volume " + r.PathValue("name") + " is in use by VM web"})
	})
	mux.HandleFunc("POST /v1/volumes/prune", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.VolumePruneResponse{Removed: []string{"b"}, SpaceReclaimed: 4096})
	})
	c := serve(t, mux)
	ctx := context.Background()
	v, err := c.CreateVolume(ctx, "pg", 64)
	if err != nil || v.Name != "pg" || v.SizeMiB != 64 || len(got) != 1 || got[0] != "create pg" {
		t.Errorf("CreateVolume: %+v, %v (server saw %v)", v, err, got)
	}
	if vs, err := c.Volumes(ctx); err != nil || len(vs) != 2 {
		t.Errorf("Volumes: %+v, %v", vs, err)
	}
	if v, err := c.InspectVolume(ctx, "a.b"); err != nil || v.UsedBy[0] != "web" {
		t.Errorf("InspectVolume: %+v, %v", v, err)
	}
	if _, err := c.InspectVolume(ctx, "nope"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("InspectVolume missing: %v, want ErrNotFound", err)
	}
	if err := c.RemoveVolume(ctx, "pg"); !errors.Is(err, client.ErrConflict) || err.Error() != "volume pg is in use by VM web" {
		t.Errorf("RemoveVolume: %v, want the conflict", err)
	}
	if r, err := c.PruneVolumes(ctx); err != nil || len(r.Removed) != 1 || r.SpaceReclaimed != 4096 {
		t.Errorf("PruneVolumes: %+v, %v", r, err)
	}
}

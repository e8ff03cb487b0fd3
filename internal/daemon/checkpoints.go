package daemon

import (
	"net/http"

	"kiln.dev/kiln/api"
)

// Checkpoint endpoints: a running VM saved into its own directory, and
// resumed by POST /v1/vms/{ref}/start?checkpoint=NAME.

func (d *Daemon) checkpointRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/vms/{ref}/checkpoints", d.handle(d.createCheckpoint))
	mux.HandleFunc("GET /v1/vms/{ref}/checkpoints", d.handle(d.listCheckpoints))
	mux.HandleFunc("DELETE /v1/vms/{ref}/checkpoints/{name}", d.handle(d.removeCheckpoint))
}

func (d *Daemon) createCheckpoint(w http.ResponseWriter, r *http.Request) error {
	var req api.CheckpointCreateRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := d.sup.Checkpoint(r.Context(), r.PathValue("ref"), req.Name, req.LeaveRunning); err != nil {
		return err
	}
	w.WriteHeader(http.StatusCreated)
	return nil
}

func (d *Daemon) listCheckpoints(w http.ResponseWriter, r *http.Request) error {
	cps, err := d.sup.Checkpoints(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	out := []api.Checkpoint{}
	for _, c := range cps {
		out = append(out, api.Checkpoint{Name: c.Name, Created: c.Created, Size: c.Size, StateSize: c.StateSize})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) removeCheckpoint(w http.ResponseWriter, r *http.Request) error {
	if err := d.sup.RemoveCheckpoint(r.Context(), r.PathValue("ref"), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

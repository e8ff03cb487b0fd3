package daemon

import (
	"net/http"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/supervisor"
)

// Volume endpoints: named volumes, kept under the root and attached to
// VMs that name them.

func (d *Daemon) volumeRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/volumes", d.handle(d.createVolume))
	mux.HandleFunc("GET /v1/volumes", d.handle(d.listVolumes))
	mux.HandleFunc("GET /v1/volumes/{name}", d.handle(d.inspectVolume))
	mux.HandleFunc("DELETE /v1/volumes/{name}", d.handle(d.removeVolume))
	mux.HandleFunc("POST /v1/volumes/prune", d.handle(d.pruneVolumes))
}

func volumeToAPI(u *supervisor.VolumeUsage) api.Volume {
	return api.Volume{Name: u.Name, SizeMiB: u.SizeMiB, Created: u.Created, UsedBytes: u.UsedBytes(),
		Path: u.Disk(), UsedBy: u.UsedBy, AttachedTo: u.AttachedTo, Anonymous: u.Anonymous, Labels: u.Labels}
}

func (d *Daemon) createVolume(w http.ResponseWriter, r *http.Request) error {
	var req api.VolumeCreateRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	u, err := d.sup.CreateVolume(r.Context(), req.Name, req.SizeMiB, req.Labels)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, volumeToAPI(u))
	return nil
}

func (d *Daemon) listVolumes(w http.ResponseWriter, r *http.Request) error {
	us, err := d.sup.ListVolumes()
	if err != nil {
		return err
	}
	out := []api.Volume{}
	for _, u := range us {
		out = append(out, volumeToAPI(u))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) inspectVolume(w http.ResponseWriter, r *http.Request) error {
	u, err := d.sup.Volume(r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, volumeToAPI(u))
	return nil
}

func (d *Daemon) removeVolume(w http.ResponseWriter, r *http.Request) error {
	if err := d.sup.RemoveVolume(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (d *Daemon) pruneVolumes(w http.ResponseWriter, r *http.Request) error {
	removed, freed, err := d.sup.PruneVolumes(r.Context())
	if err != nil {
		return err
	}
	if removed == nil {
		removed = []string{}
	}
	writeJSON(w, http.StatusOK, api.VolumePruneResponse{Removed: removed, SpaceReclaimed: freed})
	return nil
}

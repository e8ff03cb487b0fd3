package daemon

import (
	"net/http"

	"kiln.dev/kiln/api"
)

// templateRoutes serves the booted templates VMs are restored from
// (internal/vm/template.go).
func (d *Daemon) templateRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/templates/prune", d.handle(d.pruneTemplates))
}

func (d *Daemon) pruneTemplates(w http.ResponseWriter, r *http.Request) error {
	n, freed, err := d.rt.PruneTemplates()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.TemplatePruneResponse{Removed: n, SpaceReclaimed: freed})
	return nil
}

package daemon

import (
	"net/http"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/disk"
)

func (d *Daemon) systemRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/system/df", d.handle(d.diskUsage))
}

// diskUsage is what `kiln system df` shows: images and the VMs using
// them, each VM's directory, volumes and the VMs naming them, and what is
// made again when needed (root filesystems, caches, templates).
func (d *Daemon) diskUsage(w http.ResponseWriter, r *http.Request) error {
	views, err := d.sup.List(r.Context())
	if err != nil {
		return err
	}
	out := api.DiskUsage{Images: []api.ImageUsage{}, VMs: []api.VMUsage{}, Volumes: []api.VolumeUsage{}}
	byImage := map[string]int{}
	byVolume := map[string]int{}
	for _, v := range views {
		out.VMs = append(out.VMs, api.VMUsage{ID: v.Record.ID, Name: v.Record.Name, Status: v.Record.Status, SizeBytes: disk.DirUsage(v.Dir)})
		if v.Spec.ImageID != "" {
			byImage[v.Spec.ImageID]++
		}
		for _, m := range v.Spec.Mounts {
			if m.Type == "volume" && m.Source != "" {
				byVolume[m.Source]++
			}
		}
	}
	store, err := d.rt.Images()
	if err != nil {
		return err
	}
	imgs, err := store.List()
	if err != nil {
		return err
	}
	for _, img := range imagesToAPI(imgs) {
		out.Images = append(out.Images, api.ImageUsage{ID: img.ID, RepoTags: img.RepoTags, Size: img.Size, VMs: byImage[img.ID]})
	}
	vols, err := d.sup.ListVolumes()
	if err != nil {
		return err
	}
	for _, u := range vols {
		v := volumeToAPI(u)
		out.Volumes = append(out.Volumes, api.VolumeUsage{Name: v.Name, SizeBytes: v.UsedBytes, VMs: byVolume[v.Name]})
	}
	out.RootfsBytes = store.RootfsBytes()
	out.CacheBytes, out.TemplateBytes = d.rt.CacheBytes()
	writeJSON(w, http.StatusOK, out)
	return nil
}

package dockerapi

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
)

func (s *Server) volumeRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /volumes", s.handle(s.listVolumes))
	mux.HandleFunc("POST /volumes/create", s.handle(s.createVolume))
	mux.HandleFunc("GET /volumes/{name}", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		v, err := s.kiln.InspectVolume(r.Context(), r.PathValue("name"))
		if err != nil {
			return noSuchVolume(r.PathValue("name"), err)
		}
		writeJSON(w, http.StatusOK, toVolume(v))
		return nil
	}))
	mux.HandleFunc("DELETE /volumes/{name}", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return noContent(w, noSuchVolume(r.PathValue("name"), s.kiln.RemoveVolume(r.Context(), r.PathValue("name"))))
	}))
	mux.HandleFunc("POST /volumes/prune", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		res, err := s.kiln.PruneVolumes(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, volume.PruneReport{VolumesDeleted: orEmpty(res.Removed), SpaceReclaimed: uint64(res.SpaceReclaimed)})
		return nil
	}))
}

func noSuchVolume(name string, err error) error {
	if errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("get %s: no such volume: %w", name, errdefs.ErrNotFound)
	}
	return err
}

func toVolume(v api.Volume) *volume.Volume {
	out := &volume.Volume{
		Name: v.Name, Driver: "local", Mountpoint: v.Path, CreatedAt: dockerTime(v.Created),
		Labels: labelsOrEmpty(v.Labels), Scope: "local",
		UsageData: &volume.UsageData{Size: v.UsedBytes, RefCount: int64(len(v.UsedBy))},
	}
	// Options are what a user asked for, which clients (compose) compare
	// with their own: a size only when it is not the default.
	if v.SizeMiB != options.DefaultDiskMiB {
		out.Options = map[string]string{"size": options.FormatMiB(v.SizeMiB)}
	}
	return out
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) error {
	args, err := filters.FromJSON(r.URL.Query().Get("filters"))
	if err != nil {
		return refuse("invalid filters %q: %v", r.URL.Query().Get("filters"), err)
	}
	if err := args.Validate(map[string]bool{"name": true, "dangling": true, "driver": true, "label": true}); err != nil {
		return refuse("%v", err)
	}
	vols, err := s.kiln.Volumes(r.Context())
	if err != nil {
		return err
	}
	out := volume.ListResponse{Volumes: []*volume.Volume{}, Warnings: []string{}}
	for _, v := range vols {
		if args.Contains("name") && !matchAny(args.Get("name"), func(f string) bool {
			return contains([]string{v.Name}, f) || len(f) > 0 && len(v.Name) >= len(f) && v.Name[:len(f)] == f
		}) {
			continue
		}
		if args.Contains("dangling") {
			dangling := len(v.UsedBy) == 0
			if args.ExactMatch("dangling", "true") || args.ExactMatch("dangling", "1") {
				if !dangling {
					continue
				}
			} else if dangling {
				continue
			}
		}
		if args.Contains("driver") && !args.ExactMatch("driver", "local") {
			continue
		}
		if !args.MatchKVList("label", v.Labels) {
			continue
		}
		out.Volumes = append(out.Volumes, toVolume(v))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) error {
	var o volume.CreateOptions
	if err := decodeBody(w, r, &o); err != nil {
		return err
	}
	if o.Driver != "" && o.Driver != "local" {
		return refuse("volume driver %s is not supported: kiln's volumes are local disk images", o.Driver)
	}
	size := 0
	for k, v := range o.DriverOpts {
		if k != "size" {
			return refuse("volume option %s is not supported: kiln's volumes take size=SIZE only", k)
		}
		n, err := options.ParseMemory(v)
		if err != nil {
			return refuse("invalid volume size %q: want a size like 1g", v)
		}
		size = n
	}
	name := o.Name
	if name == "" {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		name = hex.EncodeToString(b)
	}
	// docker create of an existing volume answers it, unchanged.
	if v, err := s.kiln.InspectVolume(r.Context(), name); err == nil {
		writeJSON(w, http.StatusCreated, toVolume(v))
		return nil
	}
	v, err := s.kiln.CreateVolumeWith(r.Context(), api.VolumeCreateRequest{Name: name, SizeMiB: size, Labels: o.Labels})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, toVolume(v))
	return nil
}

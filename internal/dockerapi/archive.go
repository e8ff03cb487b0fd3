package dockerapi

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"time"

	"github.com/docker/docker/api/types/container"

	"kiln.dev/kiln/internal/errdefs"
)

// openArchive asks kiln for path in the VM as a tar, and reads its first
// header for docker's path stat; the returned reader is the whole
// archive.
func (s *Server) openArchive(r *http.Request) (io.ReadCloser, io.Reader, container.PathStat, error) {
	id, p := r.PathValue("id"), r.URL.Query().Get("path")
	var st container.PathStat
	if p == "" {
		return nil, nil, st, refuse("no path given: path is required")
	}
	body, err := s.kiln.CopyFrom(r.Context(), id, p)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			if _, ierr := s.kiln.Inspect(r.Context(), id); ierr != nil {
				return nil, nil, st, noSuchContainer(id, ierr)
			}
			return nil, nil, st, fmt.Errorf("Could not find the file %s in container %s: %w", p, id, errdefs.ErrNotFound)
		}
		return nil, nil, st, err
	}
	var head bytes.Buffer
	hdr, err := tar.NewReader(io.TeeReader(body, &head)).Next()
	if err != nil {
		body.Close()
		return nil, nil, st, fmt.Errorf("reading the archive of %s: %w", p, err)
	}
	fi := hdr.FileInfo()
	st = container.PathStat{Name: path.Base(p), Size: fi.Size(), Mode: fi.Mode(), Mtime: hdr.ModTime, LinkTarget: hdr.Linkname}
	return body, io.MultiReader(&head, body), st, nil
}

func setPathStat(w http.ResponseWriter, st container.PathStat) {
	b, _ := json.Marshal(st)
	w.Header().Set("X-Docker-Container-Path-Stat", base64.StdEncoding.EncodeToString(b))
}

func (s *Server) archiveGet(w http.ResponseWriter, r *http.Request) error {
	body, archive, st, err := s.openArchive(r)
	if err != nil {
		return err
	}
	defer body.Close()
	setPathStat(w, st)
	w.Header().Set("Content-Type", "application/x-tar")
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, archive)
	return nil
}

func (s *Server) archiveHead(w http.ResponseWriter, r *http.Request) error {
	body, _, st, err := s.openArchive(r)
	if err != nil {
		return err
	}
	body.Close()
	setPathStat(w, st)
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) archivePut(w http.ResponseWriter, r *http.Request) error {
	id, p := r.PathValue("id"), r.URL.Query().Get("path")
	if p == "" {
		return refuse("no path given: path is required")
	}
	if err := s.kiln.CopyTo(r.Context(), id, p, r.Body); err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			if _, ierr := s.kiln.Inspect(r.Context(), id); ierr != nil {
				return noSuchContainer(id, ierr)
			}
		}
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// containerStats answers docker stats from the guest's own view: memory
// used and its total, and its processes. CPU use is not measured yet.
func (s *Server) containerStats(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	v, err := s.kiln.Inspect(r.Context(), id)
	if err != nil {
		return noSuchContainer(id, err)
	}
	stream := r.URL.Query().Get("stream") == "" || boolParam(r, "stream")
	if boolParam(r, "one-shot") {
		stream = false
	}
	one := func(prev time.Time) container.StatsResponse {
		out := container.StatsResponse{Name: "/" + v.Name, ID: v.ID, Read: time.Now(), PreRead: prev}
		if !v.State.Running {
			return out
		}
		st, err := s.kiln.Stats(r.Context(), v.ID)
		if err != nil {
			return out
		}
		out.MemoryStats = container.MemoryStats{Usage: st.MemTotal - st.MemAvailable, Limit: st.MemTotal}
		out.PidsStats = container.PidsStats{Current: uint64(st.Processes)}
		out.CPUStats.OnlineCPUs = uint32(max(v.Config.CPUs, 1))
		return out
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	prev := time.Time{}
	for {
		cur := one(prev)
		if err := json.NewEncoder(w).Encode(cur); err != nil || !stream {
			return nil
		}
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		prev = cur.Read
		select {
		case <-r.Context().Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

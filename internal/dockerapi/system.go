package dockerapi

import (
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/api/types/volume"
	"golang.org/x/sys/unix"
)

func (s *Server) systemRoutes(mux *http.ServeMux) {
	ping := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache, no-store, must-revalidate")
		w.Header().Set("Pragma", "no-cache")
		w.Header().Set("Docker-Experimental", "false")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write([]byte("OK"))
		}
	}
	mux.HandleFunc("GET /_ping", ping)
	mux.HandleFunc("HEAD /_ping", ping)
	mux.HandleFunc("GET /version", s.handle(s.version))
	mux.HandleFunc("GET /info", s.handle(s.systemInfo))
	mux.HandleFunc("GET /system/df", s.handle(s.diskUsage))
}

// diskUsage is docker system df: kiln's figures in docker's shape, the
// images' root filesystems and caches as its layers.
func (s *Server) diskUsage(w http.ResponseWriter, r *http.Request) error {
	u, err := s.kiln.DiskUsage(r.Context())
	if err != nil {
		return err
	}
	vms, err := s.kiln.List(r.Context())
	if err != nil {
		return err
	}
	sizes := map[string]int64{}
	for _, v := range u.VMs {
		sizes[v.ID] = v.SizeBytes
	}
	out := types.DiskUsage{LayersSize: u.RootfsBytes + u.CacheBytes + u.TemplateBytes,
		Images: []*image.Summary{}, Containers: []*container.Summary{}, Volumes: []*volume.Volume{}}
	for _, i := range u.Images {
		out.Images = append(out.Images, &image.Summary{ID: i.ID, RepoTags: orEmpty(i.RepoTags), RepoDigests: []string{},
			Size: i.Size, SharedSize: -1, Containers: int64(i.VMs), Labels: map[string]string{}})
	}
	now := time.Now()
	for _, v := range vms {
		out.Containers = append(out.Containers, &container.Summary{ID: v.ID, Names: []string{"/" + v.Name}, Image: v.Config.Image,
			ImageID: v.ImageID, Created: v.Created.Unix(), State: container.ContainerState(stateOf(v.State)),
			Status: statusLine(v.State, now), SizeRw: sizes[v.ID], Labels: labelsOrEmpty(v.Config.Labels), Ports: []container.Port{}, Mounts: []container.MountPoint{}})
	}
	for _, v := range u.Volumes {
		out.Volumes = append(out.Volumes, &volume.Volume{Name: v.Name, Driver: "local", Scope: "local", Labels: map[string]string{},
			Options: map[string]string{}, UsageData: &volume.UsageData{Size: v.SizeBytes, RefCount: int64(v.VMs)}})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func (s *Server) version(w http.ResponseWriter, r *http.Request) error {
	v := types.Version{
		Version: s.info.Version, APIVersion: MaxVersion, MinAPIVersion: MinVersion,
		GitCommit: s.info.Commit, GoVersion: s.info.GoVersion, Os: "linux", Arch: runtime.GOARCH,
		KernelVersion: kernelRelease(),
	}
	v.Platform.Name = "kiln"
	v.Components = []types.ComponentVersion{{Name: "Engine", Version: s.info.Version, Details: map[string]string{
		"ApiVersion": MaxVersion, "MinAPIVersion": MinVersion, "GitCommit": s.info.Commit, "GoVersion": s.info.GoVersion,
		"Os": "linux", "Arch": runtime.GOARCH, "KernelVersion": v.KernelVersion,
	}}}
	if info, err := s.kiln.Info(r.Context()); err == nil && info.Monitor != "" {
		v.Components = append(v.Components, types.ComponentVersion{Name: "qemu", Version: strings.TrimPrefix(info.Monitor, "QEMU emulator version ")})
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (s *Server) systemInfo(w http.ResponseWriter, r *http.Request) error {
	ki, err := s.kiln.Info(r.Context())
	if err != nil {
		return err
	}
	stopped := max(ki.VMs-ki.Running-ki.Paused, 0)
	cgroupVersion := "1"
	if ki.Cgroup == "v2" {
		cgroupVersion = "2"
	}
	info := system.Info{
		ID: s.info.Hostname, Containers: ki.VMs, ContainersRunning: ki.Running, ContainersPaused: ki.Paused,
		ContainersStopped: stopped, Images: ki.Images, Driver: "kiln",
		DriverStatus:  [][2]string{{"Accelerator", ki.Accel}, {"Confinement", ki.Confinement}},
		LoggingDriver: "json-file", CgroupDriver: "cgroupfs", CgroupVersion: cgroupVersion,
		KernelVersion: kernelRelease(), OperatingSystem: "kiln (microVMs: " + ki.Monitor + ")", OSType: "linux",
		Architecture: runtime.GOARCH, NCPU: ki.HostCPUs, MemTotal: ki.HostMemory, DockerRootDir: ki.Root,
		Name: s.info.Hostname, ServerVersion: s.info.Version, DefaultRuntime: "kiln",
		Runtimes:    map[string]system.RuntimeWithStatus{"kiln": {Runtime: system.Runtime{Path: ki.Executable}}},
		SystemTime:  time.Now().Format(time.RFC3339Nano),
		MemoryLimit: true, CPUCfsQuota: true, PidsLimit: false,
		SecurityOptions: []string{"name=kiln-vm"}, Isolation: "",
		IndexServerAddress: "",
	}
	writeJSON(w, http.StatusOK, info)
	return nil
}

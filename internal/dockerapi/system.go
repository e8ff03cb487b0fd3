package dockerapi

import (
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/system"
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

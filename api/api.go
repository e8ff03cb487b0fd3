// Package api holds the types of kiln's REST API, version 1, shared by the
// daemon and its Go client. The API is JSON over a unix socket under
// /v1/; api/openapi.yaml describes it.
package api

import (
	"time"
)

// Version is the API version, the first path element of every route.
const Version = "v1"

// RestartPolicy is a VM's restart policy, as docker's.
type RestartPolicy struct {
	// Name is "no", "on-failure", "always" or "unless-stopped".
	Name string `json:"name"`
	// MaxRetries bounds on-failure restarts; 0 means no bound.
	MaxRetries int `json:"maxRetries,omitempty"`
}

// LogConfig bounds a VM's stored logs.
type LogConfig struct {
	// MaxSize is the size in bytes of one log file before it is rotated;
	// 0 means 10 MiB.
	MaxSize int64 `json:"maxSize,omitempty"`
	// MaxFiles is how many files (the current one included) are kept;
	// 0 means 3.
	MaxFiles int `json:"maxFiles,omitempty"`
}

// Ulimit is one resource limit.
type Ulimit struct {
	Name string `json:"name"`
	Soft uint64 `json:"soft"`
	Hard uint64 `json:"hard"`
}

// VMConfig is what a client asks the daemon to create.
type VMConfig struct {
	Name string `json:"name,omitempty"`
	// Program is the host path of a static executable, read by the daemon
	// when the VM is created. Exactly one of Program, Image and RootDir is set.
	Program string `json:"program,omitempty"`
	// Image is an OCI image reference (or ID) to run.
	Image string `json:"image,omitempty"`
	// RootDir is the host path of a directory that becomes the VM's root
	// filesystem (a container runtime's prepared rootfs, or podman's
	// --rootfs): packed read-only when the VM is created, with the VM's
	// writes on its own disk, as an image's root. Entrypoint and Cmd give
	// the program. Exactly one of Program, Image and RootDir is set.
	RootDir string `json:"rootDir,omitempty"`
	// Mode is "full" (the image's root filesystem), "binary" (only its
	// static ELF) or "" (the image's dev.kiln.mode label decides).
	Mode string `json:"mode,omitempty"`
	// Pull is missing (default), always or never.
	Pull     string `json:"pull,omitempty"`
	Insecure bool   `json:"insecure,omitempty"`
	// DiskMiB is the size of the VM's writable disk (sparse).
	DiskMiB     int           `json:"diskMiB,omitempty"`
	Entrypoint  []string      `json:"entrypoint,omitempty"`
	Cmd         []string      `json:"cmd,omitempty"`
	Env         []string      `json:"env,omitempty"`
	WorkingDir  string        `json:"workingDir,omitempty"`
	User        string        `json:"user,omitempty"`
	MemoryMiB   int           `json:"memoryMiB,omitempty"`
	CPUs        int           `json:"cpus,omitempty"`
	Kernel      string        `json:"kernel,omitempty"`
	Accel       string        `json:"accel,omitempty"`
	Ulimits     []Ulimit      `json:"ulimits,omitempty"`
	Restart     RestartPolicy `json:"restart"`
	AutoRemove  bool          `json:"autoRemove,omitempty"`
	Log         LogConfig     `json:"log"`
	StopTimeout int           `json:"stopTimeout,omitempty"` // seconds; 0 means 10
	BootTimeout Duration      `json:"bootTimeout,omitempty"`
	// ExtraHosts are "NAME:ADDRESS" lines for the guest's /etc/hosts;
	// ADDRESS "host-gateway" is the host, and lets the VM reach it.
	ExtraHosts []string `json:"extraHosts,omitempty"`
	// Unconfined runs the VM's QEMU without its jail and seccomp sandbox:
	// as the daemon's user, in the host's namespaces.
	Unconfined bool `json:"unconfined,omitempty"`
	// Cold boots the VM's kernel at every start, where the daemon would
	// restore it from a booted template (its default; kiln daemon
	// --templates).
	Cold bool `json:"cold,omitempty"`
	// Network is "user" (QEMU user-mode networking, the default when
	// empty), "none", or the name of a bridge network.
	Network string `json:"network,omitempty"`
	// IP is the address asked for on a bridge network; "" takes the next
	// free one.
	IP string `json:"ip,omitempty"`
	// NetworkAliases are more names the VM has on its bridge network's
	// DNS besides its own (docker's --network-alias; compose's service
	// names).
	NetworkAliases []string `json:"networkAliases,omitempty"`
	// Ports are the ports to publish; a HostPort of 0 asks for an
	// ephemeral port, picked at each start.
	Ports []PortMapping `json:"ports,omitempty"`
	// Mounts are named volumes, host directories and baked directories.
	Mounts []Mount `json:"mounts,omitempty"`
	// Healthcheck overrides the image's HEALTHCHECK; HealthOnFailure is
	// none, kill, restart or stop.
	Healthcheck     *HealthConfig `json:"healthcheck,omitempty"`
	HealthOnFailure string        `json:"healthOnFailure,omitempty"`
	// Labels are the user's metadata on the VM (docker's --label): kept
	// with it, shown by inspect, matched by ps's label filter.
	Labels map[string]string `json:"labels,omitempty"`
}

// PortMapping is a published port: HostIP:HostPort on the host reaches
// GuestPort in the VM.
type PortMapping struct {
	HostIP    string `json:"hostIP,omitempty"` // "" means 0.0.0.0
	HostPort  int    `json:"hostPort,omitempty"`
	GuestPort int    `json:"guestPort"`
	Protocol  string `json:"protocol"` // tcp or udp
}

// Duration is a time.Duration that travels as a string ("1m30s").
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// CreateResponse answers a create.
type CreateResponse struct {
	ID       string   `json:"id"`
	Name     string   `json:"name"`
	Warnings []string `json:"warnings,omitempty"`
}

// VMState is a VM's observed state.
type VMState struct {
	// Status is created, starting, running, stopping, restarting, exited
	// or dead.
	Status  string `json:"status"`
	Running bool   `json:"running"`
	// Paused: running, its guest frozen (kiln pause); Running is true.
	Paused       bool      `json:"paused"`
	PID          int       `json:"pid"`
	ExitCode     int       `json:"exitCode"`
	Error        string    `json:"error,omitempty"`
	StartedAt    time.Time `json:"startedAt,omitzero"`
	FinishedAt   time.Time `json:"finishedAt,omitzero"`
	RestartCount int       `json:"restartCount"`
	// BootUptime is the guest's uptime (seconds) when its program started.
	BootUptime float64 `json:"bootUptime,omitempty"`
	// OOMKilled: the last run's guest ran out of memory and its kernel
	// killed a process.
	OOMKilled bool `json:"oomKilled"`
	// Health is set while a VM with a health check runs.
	Health *Health `json:"health,omitempty"`
}

// VM is a VM as inspect shows it.
type VM struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Config  VMConfig  `json:"config"`
	State   VMState   `json:"state"`
	// Desired is "running" or "stopped": what the daemon keeps the VM at.
	Desired string `json:"desired"`
	Dir     string `json:"dir"`
	Accel   string `json:"accel"`
	Kernel  string `json:"kernel"`
	// ImageID is the ID of the image the VM runs, if any.
	ImageID string `json:"imageID,omitempty"`
	// ExposedPorts are the ports the image's config exposes ("80/tcp").
	ExposedPorts []string `json:"exposedPorts,omitempty"`
	// Ports are the published ports of the running VM, resolved: every
	// host address and port as the host listens on it.
	Ports []PortMapping `json:"ports,omitempty"`
	// NetworkSettings is the VM's place on a bridge network.
	NetworkSettings *NetworkSettings `json:"networkSettings,omitempty"`
	// Confinement is how the running VM's QEMU is confined, as the host's
	// kernel reports it; absent when the VM does not run.
	Confinement *Confinement `json:"confinement,omitempty"`
}

// Confinement is how a VM's QEMU process is confined.
type Confinement struct {
	// Jailed: QEMU runs in the VM's jail (own uid, namespaces, root and
	// cgroup); false for --unconfined or a daemon that is not root.
	Jailed bool `json:"jailed"`
	UID    int  `json:"uid"`
	GID    int  `json:"gid"`
	// CapEff is QEMU's effective capability set (hex; all zero when jailed).
	CapEff     string `json:"capEff"`
	NoNewPrivs bool   `json:"noNewPrivs"`
	// Seccomp is "filter" when QEMU's sandbox is on, else "disabled".
	Seccomp string `json:"seccomp"`
	// Namespaces are those QEMU does not share with the daemon.
	Namespaces []string `json:"namespaces,omitempty"`
	// Root lists what QEMU sees at its root directory.
	Root []string `json:"root,omitempty"`
	// Cgroup is the VM's cgroup and its limits.
	Cgroup *Cgroup `json:"cgroup,omitempty"`
}

// Cgroup is a VM's cgroup: where it is, what it bounds, what it uses.
type Cgroup struct {
	Version     int      `json:"version"`
	Paths       []string `json:"paths"`
	MemoryLimit int64    `json:"memoryLimit"`
	CPUs        float64  `json:"cpus"`
	PidsLimit   int64    `json:"pidsLimit"`
	MemoryUsage int64    `json:"memoryUsage"`
	Pids        int64    `json:"pids"`
	OOMKills    int64    `json:"oomKills"`
}

// WaitResponse answers a wait.
type WaitResponse struct {
	ExitCode int    `json:"exitCode"`
	Error    string `json:"error,omitempty"`
}

// LogEntry is one line of a VM's output.
type LogEntry struct {
	// Stream is "stdout", "stderr" or "console".
	Stream string    `json:"stream"`
	Time   time.Time `json:"time"`
	Line   string    `json:"log"`
}

// Event is something that happened to a VM: created, started, died,
// restarted, stopped, removed.
type Event struct {
	Time   time.Time         `json:"time"`
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Action string            `json:"action"`
	Attrs  map[string]string `json:"attrs,omitempty"`
}

// Error is the body of every error response.
type Error struct {
	Message string `json:"message"`
}

// Info answers /v1/info.
type Info struct {
	Version string `json:"version"`
	Root    string `json:"root"`
	PID     int    `json:"pid"`
	Accel   string `json:"accel"`
	VMs     int    `json:"vms"`
	Running int    `json:"running"`
	// Paused VMs are not counted in Running.
	Paused int `json:"paused"`
	// Executable is the daemon's own binary; kiln-init is looked up
	// beside it.
	Executable string `json:"executable,omitempty"`
	// BuildID identifies the daemon's build (a hash of its executable's Go
	// build ID): a CLI of another build warns. A daemon older than the
	// field sends none.
	BuildID string `json:"buildID,omitempty"`
	// Commit is the source revision it was built from ("-modified" when
	// the tree had changes), GoVersion the toolchain's.
	Commit    string `json:"commit,omitempty"`
	GoVersion string `json:"goVersion,omitempty"`
	// Monitor is the VM monitor's version (the first line of QEMU's
	// --version), Kernel the default guest kernel and where it came from.
	Monitor string `json:"monitor,omitempty"`
	Kernel  string `json:"kernel,omitempty"`
	// Images is the number of images in the store.
	Images int `json:"images"`
	// Templates: VMs start from booted templates (kiln daemon --templates).
	Templates bool `json:"templates"`
	// Confinement is how VMs' QEMUs are confined, in a phrase.
	Confinement string `json:"confinement,omitempty"`
	// Cgroup is the cgroup version VMs are limited with ("v1", "v2"), or
	// why there is none.
	Cgroup string `json:"cgroup,omitempty"`
	// FreeBytes is the free space of the root's filesystem.
	FreeBytes int64 `json:"freeBytes"`
	// HostCPUs and HostMemory (bytes) are the host's.
	HostCPUs   int   `json:"hostCPUs"`
	HostMemory int64 `json:"hostMemory"`
}

// Image is an image in the daemon's store. Its JSON is what `kiln images
// --format json` and `kiln image inspect` print.
type Image struct {
	// ID is the image's config digest.
	ID string `json:"id"`
	// RepoTags are the fully qualified tags pointing at the image, sorted.
	RepoTags []string `json:"repoTags,omitempty"`
	// RepoDigests are "repository@sha256:…" references the image was
	// pulled by (the index digest for a multi-platform image).
	RepoDigests []string `json:"repoDigests,omitempty"`
	// Digest is the digest of the platform-specific manifest stored.
	Digest string `json:"digest"`
	// Size is the bytes the image's blobs (manifest, config and compressed
	// layers) take in the store.
	Size int64 `json:"size"`
	// Created is the creation time recorded in the image config.
	Created time.Time `json:"created"`
	// OS and Architecture are the platform the image config declares.
	OS           string `json:"os,omitempty"`
	Architecture string `json:"architecture,omitempty"`
	// Config is the runtime configuration from the image config.
	Config ImageConfig `json:"config"`
}

// ImageConfig is the part of an image config that decides how its process
// runs.
type ImageConfig struct {
	Entrypoint   []string          `json:"entrypoint,omitempty"`
	Cmd          []string          `json:"cmd,omitempty"`
	Env          []string          `json:"env,omitempty"`
	WorkingDir   string            `json:"workingDir,omitempty"`
	User         string            `json:"user,omitempty"`
	StopSignal   string            `json:"stopSignal,omitempty"`
	ExposedPorts []string          `json:"exposedPorts,omitempty"` // "80/tcp", sorted
	Volumes      []string          `json:"volumes,omitempty"`      // paths, sorted
	Labels       map[string]string `json:"labels,omitempty"`
	Healthcheck  *ImageHealthcheck `json:"healthcheck,omitempty"`
}

// ImageHealthcheck is the image's HEALTHCHECK; durations are nanoseconds.
type ImageHealthcheck struct {
	Test        []string      `json:"test,omitempty"`
	Interval    time.Duration `json:"interval,omitempty"`
	Timeout     time.Duration `json:"timeout,omitempty"`
	StartPeriod time.Duration `json:"startPeriod,omitempty"`
	Retries     int           `json:"retries,omitempty"`
}

// PullRequest asks the daemon to pull an image. The answer is a stream of
// JSONMessage (application/x-ndjson) ending with one whose Aux is the
// Image pulled, or with one carrying the error; an error before the
// transfer began is a plain error answer instead.
type PullRequest struct {
	Ref      string `json:"ref"`
	Insecure bool   `json:"insecure,omitempty"`
	// Platform is "os/arch[/variant]" of a multi-platform image; empty
	// means linux/amd64.
	Platform string `json:"platform,omitempty"`
}

// PushRequest asks the daemon to push a stored image to a reference. The
// answer is a stream of JSONMessage, as for PullRequest; the last one, on
// success, has Status "Pushed".
type PushRequest struct {
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	Insecure bool   `json:"insecure,omitempty"`
}

// LoginRequest stores registry credentials for later pulls and pushes.
type LoginRequest struct {
	Registry string `json:"registry"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// DiskUsage answers GET /v1/system/df: what the root's objects take on
// the host's disk (allocated blocks: disks are sparse).
type DiskUsage struct {
	Images  []ImageUsage  `json:"images"`
	VMs     []VMUsage     `json:"vms"`
	Volumes []VolumeUsage `json:"volumes"`
	// RootfsBytes are the images' root filesystems made for VMs (packed
	// from their layers), CacheBytes the initramfs cache, TemplateBytes
	// the booted templates: all made again when needed.
	RootfsBytes   int64 `json:"rootfsBytes"`
	CacheBytes    int64 `json:"cacheBytes"`
	TemplateBytes int64 `json:"templateBytes"`
}

// ImageUsage is an image's size and how many VMs run it.
type ImageUsage struct {
	ID       string   `json:"id"`
	RepoTags []string `json:"repoTags,omitempty"`
	Size     int64    `json:"size"`
	VMs      int      `json:"vms"`
}

// VMUsage is what a VM's directory (its writable disk, logs, console)
// takes.
type VMUsage struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	SizeBytes int64  `json:"sizeBytes"`
}

// VolumeUsage is what a volume takes and how many VMs name it.
type VolumeUsage struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"sizeBytes"`
	VMs       int    `json:"vms"`
}

// VMUpdate asks for a VM's new restart policy (applied at once) and
// memory and CPUs (from its next start); absent fields stay.
type VMUpdate struct {
	Restart   *RestartPolicy `json:"restart,omitempty"`
	MemoryMiB *int           `json:"memoryMiB,omitempty"`
	CPUs      *int           `json:"cpus,omitempty"`
}

// UpdateResponse answers an update: warnings say what waits for the VM's
// next start.
type UpdateResponse struct {
	Warnings []string `json:"warnings,omitempty"`
}

package vm

import (
	"bufio"
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vmm"
)

// Spec is a VM as kiln runs it, in two parts: the request a client made
// (api.VMConfig, embedded, so s.Cmd is the request's Cmd), and what kiln
// worked out for it when it was created. Its one copy is the VM
// directory's vm.json (vmRecord).
//
// The request is kept as it came, with its defaults filled in (by Resolve,
// and by the supervisor for its options), a Name made from the ID when it
// had none, and an image's HEALTHCHECK merged into Healthcheck; a zero
// optional field means the default. Its fields are documented in
// api.VMConfig; how they read here:
//
//   - Program (bare mode) is placed at /usr/local/bin/<base name> in the
//     guest; Image is run instead, its config honoured as docker does and
//     overridden by the request; RootDir (a host directory) is run as an
//     image with no config of its own would be, the request's Entrypoint
//     and Cmd its command. Exactly one of the three is set. Mode, Pull,
//     Insecure and DiskMiB apply to an image only (options.ModeFull or
//     ModeBinary, "" for the image's options.ModeLabel; options.PullMissing
//     by default; a sparse disk of options.DefaultDiskMiB by default).
//   - User is uid[:gid], numeric, for a program (a bare VM has no
//     /etc/passwd); names are resolved in the guest for an image.
//   - BootTimeout bounds the time from QEMU's start to kiln-init starting
//     the program; a VM that misses it is a failed boot.
//   - Network is network.ModeUser ("" too), network.ModeNone, a bridge
//     network's name, or ns:PATH, a network namespace whose interface the
//     VM takes over (network.NSPrefix); Ports need user-mode networking
//     or a bridge.
//   - ExtraHosts' ADDRESS may be HostGateway, which also opens the host's
//     loopback services to the VM (closed to every other VM: see
//     Confinement).
//   - Mounts are named volumes, host directories and baked directories
//     (mounts.go).
//   - Restart, AutoRemove, Log, StopTimeout and HealthOnFailure are read by
//     the supervisor only (supervisor.OptionsOf).
//
// The fields after it are not asked for: Create, the supervisor and the
// image fill them in, and a request never carries them.
//
// A vm.json (or an older state record) written by a kiln whose Spec was a
// copy of the request's fields, not the request, is read too: see
// legacySpec.
type Spec struct {
	api.VMConfig

	// ID, when set, is the ID Create gives the VM (the supervisor picks
	// it to lease an address under it before the VM exists).
	ID string `json:"-"`
	// ImageID and ExposedPorts are filled in by Create from the image: its
	// ID (the config digest, which VMs using the image are found by) and
	// the ports its config exposes ("80/tcp").
	ImageID      string   `json:"imageID,omitempty"`
	ExposedPorts []string `json:"exposedPorts,omitempty"`
	// StopSignal is the image's STOPSIGNAL, filled in by Create; 0 is
	// SIGTERM.
	StopSignal int `json:"stopSignal,omitempty"`
	// Attach is the VM's place on its bridge network, filled in by the
	// supervisor when it leases the address (see bridge.go).
	Attach *network.Attachment `json:"attach,omitempty"`
	// Pod is the interface the VM takes over in its network namespace
	// (Network ns:PATH), as Create found it.
	Pod *network.PodInterface `json:"pod,omitempty"`
}

// HostLimits are the bounds a Spec is checked against.
type HostLimits struct {
	MemoryMiB int
	CPUs      int
}

// ThisHost returns the limits of this machine.
func ThisHost() HostLimits {
	return HostLimits{MemoryMiB: hostMemoryMiB(), CPUs: runtime.NumCPU()}
}

func hostMemoryMiB() int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return math.MaxInt32
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err == nil {
				return kb / 1024
			}
		}
	}
	return math.MaxInt32
}

// ValidateName reports whether name can name a VM.
func ValidateName(name string) error { return options.ValidateName("VM", name) }

// Resolve fills in s's defaults and puts its values in their canonical
// form: memory, CPUs, boot timeout, accelerator and network mode, an
// image's pull policy and disk size, clean mount paths. It never fails: a
// value it cannot read is left as it is, for Validate to refuse.
func (s *Spec) Resolve() {
	if s.MemoryMiB == 0 {
		s.MemoryMiB = options.DefaultMemoryMiB
	}
	if s.CPUs == 0 {
		s.CPUs = 1
	}
	if a, err := vmm.ParseAccel(s.Accel); err == nil {
		s.Accel = string(a)
	}
	if s.BootTimeout == 0 {
		s.BootTimeout = api.Duration(options.DefaultBootTimeout)
	}
	if mode, err := network.ParseMode(s.Network); err == nil {
		s.Network = mode
	}
	if s.Image != "" {
		if s.Pull == "" {
			s.Pull = options.PullMissing
		}
	}
	if (s.Image != "" || s.RootDir != "") && s.DiskMiB == 0 {
		s.DiskMiB = options.DefaultDiskMiB
	}
	options.CleanMounts(s.Mounts)
}

// Validate checks s against the host's limits without changing it. A zero
// optional field is judged as the default Resolve gives it.
func (s *Spec) Validate(h HostLimits) error {
	if err := ValidateHealth(s.Healthcheck); err != nil {
		return err
	}
	if s.Name != "" {
		if err := ValidateName(s.Name); err != nil {
			return err
		}
	}
	switch n := btoi(s.Program != "") + btoi(s.Image != "") + btoi(s.RootDir != ""); {
	case n == 0:
		return errdefs.Invalid("no program, image or root directory to run")
	case n > 1:
		return errdefs.Invalid("give one of a program, an image and a root directory to run, not several")
	}
	if s.RootDir != "" {
		if !path.IsAbs(s.RootDir) {
			return errdefs.Invalid(fmt.Sprintf("invalid root directory %q: must be an absolute path on the daemon's host", s.RootDir))
		}
		if len(s.Entrypoint)+len(s.Cmd) == 0 {
			return errdefs.Invalid(fmt.Sprintf("root directory %s: no command to run in it (give the program's path in it and its arguments)", s.RootDir))
		}
	}
	if err := s.validateImage(); err != nil {
		return err
	}
	if err := s.ValidateResources(h); err != nil {
		return err
	}
	for _, e := range s.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsAny(k, "\x00") {
			return errdefs.Invalid(fmt.Sprintf("invalid environment entry %q: want KEY=VALUE", e))
		}
	}
	if s.WorkingDir != "" && !path.IsAbs(s.WorkingDir) {
		return errdefs.Invalid(fmt.Sprintf("invalid working directory %q: must be an absolute path", s.WorkingDir))
	}
	if s.Image != "" || s.RootDir != "" {
		if err := ValidateImageUser(s.User); err != nil {
			return err
		}
	} else if _, _, err := ParseUser(s.User); err != nil {
		return err
	}
	if _, err := vmm.ParseAccel(s.Accel); err != nil {
		return errdefs.Invalid(err.Error())
	}
	if s.BootTimeout < 0 {
		return errdefs.Invalid(fmt.Sprintf("invalid boot timeout %s: must be positive", time.Duration(s.BootTimeout)))
	}
	mode, err := network.ParseMode(s.Network)
	if err != nil {
		return err
	}
	if err := network.Validate(s.Ports); err != nil {
		return err
	}
	if mode == network.ModeNone && len(s.Ports) > 0 {
		return errdefs.Invalid(fmt.Sprintf("cannot publish port %s: --network none gives the VM no network", network.PortKey(s.Ports[0])))
	}
	if network.IsNS(mode) && len(s.Ports) > 0 {
		return errdefs.Invalid(fmt.Sprintf("cannot publish port %s: a VM in a network namespace (%s) is reached at its address there, as a pod is", network.PortKey(s.Ports[0]), mode))
	}
	if err := s.validateBridge(); err != nil {
		return err
	}
	if err := options.ValidateMounts(s.Mounts); err != nil {
		return err
	}
	for _, h := range s.ExtraHosts {
		if _, _, err := ParseExtraHost(h); err != nil {
			return err
		}
	}
	if len(s.NetworkAliases) > 0 && !network.IsBridge(mode) {
		return errdefs.Invalid(fmt.Sprintf("network alias %s needs a bridge network (--network NAME): only those have kiln's DNS", s.NetworkAliases[0]))
	}
	for _, a := range s.NetworkAliases {
		if err := network.ValidateDNSName(a); err != nil {
			return err
		}
	}
	return options.ValidateRlimits(s.Ulimits)
}

// ValidateResources checks the memory, CPUs and restart policy against
// the host: what `kiln update` may change.
func (s *Spec) ValidateResources(h HostLimits) error {
	if mem := cmp.Or(s.MemoryMiB, options.DefaultMemoryMiB); mem < options.MinMemoryMiB || mem > h.MemoryMiB {
		return errdefs.Invalid(fmt.Sprintf("invalid memory %s: allowed %dm to %dm (this host's memory)", options.FormatMiB(mem), options.MinMemoryMiB, h.MemoryMiB))
	}
	if cpus := cmp.Or(s.CPUs, 1); cpus < 1 || cpus > h.CPUs {
		return errdefs.Invalid(fmt.Sprintf("invalid cpus %d: allowed 1 to %d (this host's CPUs)", cpus, h.CPUs))
	}
	return options.RestartPolicy(s.Restart).Validate()
}

// validateImage checks the image fields.
func (s *Spec) validateImage() error {
	if s.Image == "" {
		if s.Mode != "" || s.Pull != "" || s.DiskMiB != 0 && s.RootDir == "" {
			return errdefs.Invalid("--mode, --pull and --disk-size apply to images only (and --disk-size to a root directory)")
		}
		return s.validateDisk()
	}
	if err := ValidateImageRef(s.Image); err != nil {
		return err
	}
	switch s.Mode {
	case "", options.ModeFull, options.ModeBinary:
	default:
		return errdefs.Invalid(fmt.Sprintf("invalid mode %q: use full or binary", s.Mode))
	}
	switch s.Pull {
	case "", options.PullMissing, options.PullAlways, options.PullNever:
	default:
		return errdefs.Invalid(fmt.Sprintf("invalid pull policy %q: use missing, always or never", s.Pull))
	}
	return s.validateDisk()
}

// validateDisk checks the size of the writable disk of an image or root
// directory VM.
func (s *Spec) validateDisk() error {
	if disk := cmp.Or(s.DiskMiB, options.DefaultDiskMiB); disk < options.MinDiskMiB || disk > options.MaxDiskMiB {
		return errdefs.Invalid(fmt.Sprintf("invalid disk size %s: allowed %dm to %s", options.FormatMiB(disk), options.MinDiskMiB, options.FormatMiB(options.MaxDiskMiB)))
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

var (
	imageIDRE   = regexp.MustCompile(`^(sha256:)?[0-9a-f]{1,64}$`)
	userPartRE  = regexp.MustCompile(`^[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?$`)
	maxUserPart = 256
)

// ValidateImageRef reports whether ref can name an image: a reference
// ("app", "app:v1", "host:5000/team/app@sha256:…") or an image ID or ID
// prefix ("sha256:ab12…", "ab12…").
func ValidateImageRef(ref string) error {
	if imageIDRE.MatchString(ref) {
		return nil
	}
	if _, err := name.ParseReference(ref); err != nil {
		return errdefs.Invalid(fmt.Sprintf("invalid image reference %q (and no such file on this host): %s", ref, err.Error()))
	}
	return nil
}

// ValidateImageUser checks a --user for an image VM: user[:group], each a
// name or a numeric id, resolved in the guest against the image's
// /etc/passwd and /etc/group. "" is the image's user.
func ValidateImageUser(s string) error {
	if s == "" {
		return nil
	}
	u, g, hasG := strings.Cut(s, ":")
	if !validUserPart(u) || (hasG && !validUserPart(g)) {
		return errdefs.Invalid(fmt.Sprintf("invalid user %q: want user[:group], each a name or a number", s))
	}
	return nil
}

func validUserPart(p string) bool { return len(p) <= maxUserPart && userPartRE.MatchString(p) }

// ParseUser parses uid[:gid] (numeric). "" is root.
func ParseUser(s string) (uid, gid uint32, err error) {
	if s == "" {
		return 0, 0, nil
	}
	u, g, hasG := strings.Cut(s, ":")
	uv, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		return 0, 0, errdefs.Invalid(fmt.Sprintf("invalid user %q: a bare VM has no user database, use a numeric uid[:gid]", s))
	}
	// Without a group, gid 0, as docker gives a uid that has no passwd
	// entry (a bare VM has none).
	gv := uint64(0)
	if hasG {
		gv, err = strconv.ParseUint(g, 10, 32)
		if err != nil {
			return 0, 0, errdefs.Invalid(fmt.Sprintf("invalid user %q: a bare VM has no group database, use a numeric uid[:gid]", s))
		}
	}
	return uint32(uv), uint32(gv), nil
}

// HostGateway is the --add-host address that stands for the host itself,
// as docker spells it.
const HostGateway = "host-gateway"

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]{0,252})$`)

// ParseExtraHost parses an --add-host entry, NAME:ADDRESS (an IPv4 or IPv6
// address, or HostGateway).
func ParseExtraHost(s string) (name, addr string, err error) {
	name, addr, ok := strings.Cut(s, ":")
	if !ok || !hostnameRE.MatchString(name) {
		return "", "", errdefs.Invalid(fmt.Sprintf("invalid --add-host %q: want NAME:ADDRESS, NAME a host name, ADDRESS an IP address or %s", s, HostGateway))
	}
	if addr == HostGateway {
		return name, addr, nil
	}
	if _, err := netip.ParseAddr(strings.Trim(addr, "[]")); err != nil {
		return "", "", errdefs.Invalid(fmt.Sprintf("invalid --add-host %q: address %q is neither an IP address nor %s", s, addr, HostGateway))
	}
	return name, strings.Trim(addr, "[]"), nil
}

// guestRlimits are s's ulimits as the guest protocol carries them. The
// protocol keeps a type of its own (agent.Rlimit), converted here only: it
// is what kiln-init reads, and changes with agent.Version, not with the
// API.
func (s *Spec) guestRlimits() []agent.Rlimit {
	var out []agent.Rlimit
	for _, u := range s.Ulimits {
		out = append(out, agent.Rlimit{Name: u.Name, Soft: u.Soft, Hard: u.Hard})
	}
	return out
}

// HostAccess reports whether the VM asked to reach the host
// (--add-host NAME:host-gateway).
func (s *Spec) HostAccess() bool {
	for _, h := range s.ExtraHosts {
		if _, a, err := ParseExtraHost(h); err == nil && a == HostGateway {
			return true
		}
	}
	return false
}

// guestHosts returns the /etc/hosts lines of s.ExtraHosts, HostGateway
// replaced by gateway (the host as the guest reaches it).
func (s *Spec) guestHosts(gateway string) []string {
	var out []string
	for _, h := range s.ExtraHosts {
		name, addr, err := ParseExtraHost(h)
		if err != nil {
			continue
		}
		if addr == HostGateway {
			if gateway == "" {
				continue
			}
			addr = gateway
		}
		out = append(out, addr+"\t"+name)
	}
	return out
}

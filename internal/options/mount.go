package options

import (
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

// Mount types (Mount.Type).
const (
	// MountVolume is a named volume: a disk image under the kiln root,
	// attached as a virtio-blk drive, that outlives the VM.
	MountVolume = "volume"
	// MountBind is a host directory shared live into the guest (9p).
	MountBind = "bind"
	// MountBake is a host directory copied into the VM when it is created
	// (a read-only squashfs disk of its own).
	MountBake = "bake"
)

// Mount is a filesystem a VM gets at Target, besides its root: the API's
// type itself, so a request's mounts are used as they come. Type is
// MountVolume, MountBind or MountBake; Source is the volume's name or an
// absolute host path; Anonymous marks a volume made for this VM alone
// (`-v /path`, or --mount type=volume without src): Create names it, and
// it goes with the VM on `kiln rm -v` and with a --rm VM, as in docker.
type Mount = api.Mount

// FormatMount formats m the way --mount takes it, for messages.
func FormatMount(m Mount) string {
	s := "type=" + m.Type + ",src=" + m.Source + ",dst=" + m.Target
	if m.ReadOnly {
		s += ",readonly"
	}
	return s
}

// ParseVolumeFlag parses a -v value as docker does: SRC:DST[:OPTS], where
// SRC is a volume name (no '/', not starting with '.') or an absolute host
// directory, and OPTS is ro or rw; or DST alone, an anonymous volume.
func ParseVolumeFlag(s string) (Mount, error) {
	bad := func(why string) (Mount, error) {
		return Mount{}, errdefs.Invalid(fmt.Sprintf("invalid volume %q: %s", s, why))
	}
	parts := strings.Split(s, ":")
	if len(parts) == 1 && strings.HasPrefix(s, "/") {
		return Mount{Type: MountVolume, Target: s, Anonymous: true}, nil
	}
	if len(parts) < 2 || len(parts) > 3 {
		return bad("want NAME:/guest/path[:ro|rw], /host/dir:/guest/path[:ro|rw] or /guest/path (an anonymous volume)")
	}
	m := Mount{Type: MountVolume, Source: parts[0], Target: parts[1]}
	switch {
	case m.Source == "":
		return bad("no source: give a volume name or an absolute host path")
	case strings.HasPrefix(m.Source, "/"):
		m.Type = MountBind
	case strings.HasPrefix(m.Source, ".") || strings.Contains(m.Source, "/"):
		return bad(fmt.Sprintf("host path %q is relative: give an absolute path (a name without '/' is a volume)", m.Source))
	}
	if len(parts) == 3 {
		for _, o := range strings.Split(parts[2], ",") {
			switch o {
			case "ro", "readonly":
				m.ReadOnly = true
			case "rw":
				m.ReadOnly = false
			default:
				return bad(fmt.Sprintf("unknown option %q: use ro or rw", o))
			}
		}
	}
	return m, nil
}

// ParseMountFlag parses a --mount value as docker does: comma-separated
// key=value pairs with type (volume, bind or bake; default volume), src or
// source, dst, destination or target, and readonly (or ro), alone or =true
// or =false.
func ParseMountFlag(s string) (Mount, error) {
	bad := func(why string) (Mount, error) {
		return Mount{}, errdefs.Invalid(fmt.Sprintf("invalid mount %q: %s", s, why))
	}
	m := Mount{Type: MountVolume}
	seen := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		k, v, hasV := strings.Cut(kv, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		switch k {
		case "src", "source":
			k = "source"
		case "dst", "destination", "target":
			k = "target"
		case "ro":
			k = "readonly"
		}
		if seen[k] {
			return bad(fmt.Sprintf("%s given twice", k))
		}
		seen[k] = true
		if !hasV && (k == "type" || k == "source" || k == "target") {
			return bad(fmt.Sprintf("%s needs a value (%s=...)", k, k))
		}
		switch k {
		case "type":
			switch v {
			case MountVolume, MountBind, MountBake:
				m.Type = v
			default:
				return bad(fmt.Sprintf("unknown type %q: use volume, bind or bake", v))
			}
		case "source":
			m.Source = v
		case "target":
			m.Target = v
		case "readonly":
			if !hasV {
				m.ReadOnly = true
				break
			}
			b, err := strconv.ParseBool(v)
			if err != nil {
				return bad(fmt.Sprintf("readonly=%q: want true or false", v))
			}
			m.ReadOnly = b
		default:
			return bad(fmt.Sprintf("unknown key %q: use type, src, dst and readonly", k))
		}
	}
	if m.Source == "" && m.Type == MountVolume {
		m.Anonymous = true
	} else if m.Source == "" {
		return bad("no src: give an absolute host path")
	}
	if m.Target == "" {
		return bad("no dst: give the path in the guest")
	}
	if m.Type == MountBake {
		m.ReadOnly = true
	}
	return m, nil
}

// forbiddenTargets are guest paths a mount may not cover: the root and the
// kernel filesystems kiln-init mounts.
var forbiddenTargets = []string{"/", "/proc", "/sys", "/dev"}

// CleanMounts puts each mount's paths in their clean form: the guest
// target and a host source. ValidateMounts judges the cleaned form.
func CleanMounts(ms []Mount) {
	for i := range ms {
		m := &ms[i]
		if path.IsAbs(m.Target) {
			m.Target = path.Clean(m.Target)
		}
		if (m.Type == MountBind || m.Type == MountBake) && filepath.IsAbs(m.Source) {
			m.Source = filepath.Clean(m.Source)
		}
	}
}

// ValidateMounts checks mounts without looking at the host or changing
// them: targets absolute, not the root or a kernel filesystem, each used
// once (as cleaned); volume names valid; host paths absolute.
func ValidateMounts(ms []Mount) error {
	targets := map[string]bool{}
	for _, m := range ms {
		if !path.IsAbs(m.Target) {
			return errdefs.Invalid(fmt.Sprintf("invalid mount target %q (%s): must be an absolute path in the guest", m.Target, FormatMount(m)))
		}
		target := path.Clean(m.Target)
		for _, f := range forbiddenTargets {
			if target == f || f != "/" && strings.HasPrefix(target, f+"/") {
				return errdefs.Invalid(fmt.Sprintf("invalid mount target %q: a mount may not cover /, /proc, /sys or /dev", target))
			}
		}
		if targets[target] {
			return errdefs.Invalid(fmt.Sprintf("invalid mounts: two mounts on %s", target))
		}
		targets[target] = true
		if m.Anonymous && m.Type != MountVolume {
			return errdefs.Invalid(fmt.Sprintf("invalid mount %s: only a volume can be anonymous", FormatMount(m)))
		}
		switch m.Type {
		case MountVolume:
			if m.Anonymous && m.Source == "" {
				continue // named by Create
			}
			if err := ValidateVolumeName(m.Source); err != nil {
				return err
			}
		case MountBind, MountBake:
			if !filepath.IsAbs(m.Source) {
				return errdefs.Invalid(fmt.Sprintf("invalid host path %q (%s): must be absolute", m.Source, FormatMount(m)))
			}
		default:
			return errdefs.Invalid(fmt.Sprintf("invalid mount type %q: use volume, bind or bake", m.Type))
		}
	}
	return nil
}

var volumeNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// ValidateVolumeName reports whether name can name a volume: as a VM name,
// 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit.
func ValidateVolumeName(name string) error {
	if !volumeNameRE.MatchString(name) {
		return errdefs.Invalid(fmt.Sprintf("invalid volume name %q: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit (a host path must be absolute)", name))
	}
	return nil
}

package jail

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Default range of the uids (and gids) jailed VMMs run as: 65536 ids just
// above systemd's range for containers (524288-1879048191) and below 2^31,
// which some tools mishandle. Configurable with the daemon's --jail-uids or
// $KILN_JAIL_UIDS.
const (
	DefaultUIDMin = 1879048192
	DefaultUIDMax = DefaultUIDMin + 65535
)

// UIDsEnv overrides the uid range: "MIN-MAX".
const UIDsEnv = "KILN_JAIL_UIDS"

// LockDir holds one lock file per uid of the range, host-wide: every kiln
// root on the host takes its VMs' uids from the same locks.
const LockDir = "/run/kiln/jail-uids"

// Range is a range of uids, both ends included.
type Range struct{ Min, Max int }

// String formats r as ParseRange reads it.
func (r Range) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

// ParseRange parses "MIN-MAX".
func ParseRange(s string) (Range, error) {
	lo, hi, ok := strings.Cut(s, "-")
	a, err1 := strconv.Atoi(strings.TrimSpace(lo))
	b, err2 := strconv.Atoi(strings.TrimSpace(hi))
	switch {
	case !ok || err1 != nil || err2 != nil:
		return Range{}, fmt.Errorf("jail uid range %q: want MIN-MAX, e.g. %d-%d", s, DefaultUIDMin, DefaultUIDMax)
	case a < 1000 || b <= a || b >= 1<<32-1:
		return Range{}, fmt.Errorf("jail uid range %q: want 1000 <= MIN < MAX < 4294967295 (0 is root, low ids belong to the system)", s)
	}
	return Range{a, b}, nil
}

// Split divides r in two halves: the uids of VMs kept off the host's own
// services, and those of VMs that asked to reach them. The host's firewall
// tells them apart by uid alone, so it is the same for every kiln daemon.
func (r Range) Split() (closed, hostAccess Range) {
	half := (r.Max - r.Min + 1) / 2
	return Range{r.Min, r.Min + half - 1}, Range{r.Min + half, r.Max}
}

// CheckRange reports a user or group of the host (passwd and group files,
// in /etc/passwd format) whose id falls in r: jailed VMMs must not share
// an id with anything else on the host.
func CheckRange(r Range, passwd, group io.Reader) error {
	for _, f := range []struct {
		what string
		r    io.Reader
	}{{"user", passwd}, {"group", group}} {
		if f.r == nil {
			continue
		}
		sc := bufio.NewScanner(f.r)
		for sc.Scan() {
			fields := strings.Split(sc.Text(), ":")
			if len(fields) < 3 {
				continue
			}
			id, err := strconv.Atoi(fields[2])
			if err == nil && id >= r.Min && id <= r.Max {
				return fmt.Errorf("jail uid range %s holds the host's %s %s (id %d): choose a range no user or group uses, with the daemon's --jail-uids or $%s", r, f.what, fields[0], id, UIDsEnv)
			}
		}
	}
	return nil
}

// CheckHostRange is CheckRange on /etc/passwd and /etc/group.
func CheckHostRange(r Range) error {
	var rs []io.Reader
	for _, p := range []string{"/etc/passwd", "/etc/group"} {
		f, err := os.Open(p)
		if err != nil {
			rs = append(rs, nil)
			continue
		}
		defer f.Close()
		rs = append(rs, f)
	}
	return CheckRange(r, rs[0], rs[1])
}

// ErrNoUID is returned when every uid of the range is in use.
var ErrNoUID = errors.New("every jail uid is in use")

// ClaimUID takes a uid of r that no running VM on the host has, and
// returns it with the lock that holds it: the open lock file, flock'd. The
// VMM inherits the lock (it is among its descriptors) so the uid stays
// taken exactly as long as the VMM lives, whatever becomes of the kiln
// process that started it; the caller closes its own copy once the VMM
// has started, or when starting it failed. hint picks where to start
// looking, so that a VM tends to get the same uid again.
func ClaimUID(dir string, r Range, hint int) (int, *os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, nil, fmt.Errorf("making the jail uid locks directory: %w", err)
	}
	n := r.Max - r.Min + 1
	if hint < 0 {
		hint = -hint
	}
	for i := range n {
		uid := r.Min + (hint+i)%n
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(uid)), os.O_RDONLY|os.O_CREATE, 0o600)
		if err != nil {
			return 0, nil, fmt.Errorf("opening jail uid lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				continue
			}
			return 0, nil, fmt.Errorf("locking jail uid %d: %w", uid, err)
		}
		return uid, f, nil
	}
	return 0, nil, fmt.Errorf("%w: %d VMs of range %s run on this host", ErrNoUID, n, r)
}

// UIDInUse reports whether a running VMM holds uid's lock.
func UIDInUse(dir string, uid int) bool {
	f, err := os.Open(filepath.Join(dir, strconv.Itoa(uid)))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

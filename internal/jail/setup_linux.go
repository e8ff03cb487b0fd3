package jail

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// setup builds the jail and execs its program. Each step runs as root in
// the jail's namespaces; privileges go last, just before the exec.
func setup(s *Spec) error {
	for _, cg := range s.Cgroups {
		// "0" is the writing process itself, whatever its pid namespace.
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte("0"), 0); err != nil {
			return fmt.Errorf("jail: joining cgroup %s: %w", cg, err)
		}
	}
	// Nothing mounted here propagates back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("jail: making mounts private: %w", err)
	}
	if err := unix.Mount("tmpfs", s.Root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m,nr_inodes=1024"); err != nil {
		return fmt.Errorf("jail: mounting its root on %s: %w", s.Root, err)
	}
	for _, b := range s.Binds {
		if err := bind(s.Root, b); err != nil {
			return err
		}
	}
	if s.Proc {
		if err := mountProc(s.Root); err != nil {
			return err
		}
	}
	if err := pivot(s.Root); err != nil {
		return err
	}
	if s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("jail: setting host name: %w", err)
		}
	}
	if err := dropPrivileges(s.UID, s.GID); err != nil {
		return err
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("jail: entering its root: %w", err)
	}
	if err := syscall.Exec(s.Argv[0], s.Argv, s.Env); err != nil {
		return fmt.Errorf("jail: executing %s: %w", s.Argv[0], err)
	}
	return nil
}

// bind mounts b.Src on root+b.Dst: read-only unless writable, nosuid, and
// nodev unless it is a device.
func bind(root string, b Bind) error {
	st, err := os.Stat(b.Src)
	if err != nil {
		return fmt.Errorf("jail: bind source: %w", err)
	}
	dst := filepath.Join(root, b.Dst)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("jail: making %s: %w", filepath.Dir(b.Dst), err)
	}
	if b.MountFD > 0 {
		if err := os.Mkdir(dst, 0o755); err != nil {
			return fmt.Errorf("jail: making mount point %s: %w", b.Dst, err)
		}
		return moveMount(b.MountFD, dst)
	}
	if st.IsDir() {
		err = os.Mkdir(dst, 0o755)
	} else {
		var f *os.File
		if f, err = os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			err = f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("jail: making mount point %s: %w", b.Dst, err)
	}
	if err := unix.Mount(b.Src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("jail: binding %s on %s: %w", b.Src, b.Dst, err)
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID)
	if !b.Writable {
		flags |= unix.MS_RDONLY
	}
	if !b.Device {
		flags |= unix.MS_NODEV
	}
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("jail: restricting %s: %w", b.Dst, err)
	}
	return nil
}

// pivot makes root the process's root and detaches the host's, then makes
// the new root read-only.
func pivot(root string) error {
	old := filepath.Join(root, ".old")
	if err := os.Mkdir(old, 0o700); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("jail: pivot_root to %s: %w", root, err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.Unmount("/.old", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("jail: detaching the host's root: %w", err)
	}
	if err := os.Remove("/.old"); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("jail: making its root read-only: %w", err)
	}
	return nil
}

// lastCap is the highest capability number this code knows to drop; the
// kernel's own may be higher, so dropping goes on until EINVAL.
const lastCap = 63

// dropPrivileges empties the capability bounding set, leaves every group,
// takes uid and gid (which clears the permitted, effective and ambient
// sets: no SECBIT_KEEP_CAPS) and sets no_new_privs, so nothing the program
// execs can gain a privilege back.
func dropPrivileges(uid, gid int) error {
	for c := 0; c <= lastCap; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			if err == unix.EINVAL {
				break // past the kernel's last capability
			}
			return fmt.Errorf("jail: dropping capability %d: %w", c, err)
		}
	}
	// syscall's (not x/sys/unix's) set the ids of every thread of the
	// process, as POSIX wants.
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("jail: leaving supplementary groups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("jail: taking gid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("jail: taking uid %d: %w", uid, err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("jail: setting no_new_privs: %w", err)
	}
	return nil
}

// mountProc mounts, at /proc of the jail, a procfs of the jail's own pid
// namespace that shows processes only (subset=pid: no /proc/sys, no
// /proc/kcore and the like) and, of them, only those the viewer may
// ptrace (hidepid=invisible): the VMM sees itself and nothing else.
func mountProc(root string) error {
	dst := filepath.Join(root, "proc")
	if err := os.Mkdir(dst, 0o555); err != nil {
		return fmt.Errorf("jail: making /proc: %w", err)
	}
	if err := unix.Mount("proc", dst, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "subset=pid,hidepid=invisible"); err != nil {
		return fmt.Errorf("jail: mounting /proc: %w", err)
	}
	return nil
}

//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/agent"
)

// volMnt is where the disks of volumes are mounted in the initramfs; their
// data directory is bound at the target. Like the root's disks they are
// out of the program's sight after the switch.
const volMnt = "/kiln/vol"

// ninePOpts are the 9p mount options: the Linux dialect over virtio, with
// large messages; no caching, so the host's changes are seen at once.
const ninePOpts = "trans=virtio,version=9p2000.L,msize=262144,cache=none"

// setupMounts mounts the spec's volumes, shared and baked directories
// under root ("/" in a bare VM, the new root before the switch in an image
// VM), in order.
func setupMounts(ms []agent.Mount, root string) error {
	for i, m := range ms {
		dst := filepath.Join(root, m.Target)
		var err error
		switch m.Kind {
		case agent.MountDisk:
			err = mountDisk(i, m, root, dst)
		case agent.Mount9P:
			err = mount9P(m, dst)
		default:
			err = fmt.Errorf("unknown kind %q", m.Kind)
		}
		if err != nil {
			return fmt.Errorf("mounting %s: %w", m.Target, err)
		}
	}
	return nil
}

func mountDisk(i int, m agent.Mount, root, dst string) error {
	dev, err := findDisk(m.Serial)
	if err != nil {
		return err
	}
	var flags uintptr = unix.MS_NOATIME
	var data string
	if m.FSType == "ext4" {
		data = "noinit_itable" // a sparse file: see switchRoot
	}
	if m.SubDir == "" {
		// A baked directory: the disk itself, read-only.
		if err := mkTarget(dst); err != nil {
			return err
		}
		if m.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount(dev, dst, m.FSType, flags, data); err != nil {
			return fmt.Errorf("mounting %s (%s): %w", dev, m.FSType, err)
		}
		return nil
	}
	mnt := filepath.Join(volMnt, strconv.Itoa(i))
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(dev, mnt, m.FSType, flags, data); err != nil {
		return fmt.Errorf("mounting %s (%s): %w", dev, m.FSType, err)
	}
	src := filepath.Join(mnt, m.SubDir)
	if _, err := os.Lstat(src); errors.Is(err, fs.ErrNotExist) {
		if err := firstUse(dst, src); err != nil {
			return fmt.Errorf("copying the image's %s into the volume: %w", m.Target, err)
		}
	}
	if err := mkTarget(dst); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding the volume at %s: %w", dst, err)
	}
	if m.ReadOnly {
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", dst, err)
		}
	}
	return nil
}

func mount9P(m agent.Mount, dst string) error {
	if err := mkTarget(dst); err != nil {
		return err
	}
	var flags uintptr
	if m.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(m.Tag, dst, "9p", flags, ninePOpts); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("mounting host directory %s: the guest kernel has no 9p filesystem, which host directories need (kiln's own kernel has it; Debian's cloud kernel does not): %w", m.Tag, err)
		}
		return fmt.Errorf("mounting host directory %s (9p): %w", m.Tag, err)
	}
	return nil
}

// mkTarget makes the mount point when the root lacks it.
func mkTarget(dst string) error {
	st, err := os.Stat(dst)
	if err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dst)
		}
		return nil
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("creating the mount point: %w", err)
	}
	return nil
}

// firstUse fills a volume used for the first time: its data directory
// takes the owner and mode of the target in the image, and the target's
// content is copied in, owners, modes and times kept, as docker does for an
// empty volume. It is built beside and renamed into place, so a VM that
// dies half-way copies again at its next start.
func firstUse(target, data string) error {
	tmp := data + ".new"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	st, err := os.Stat(target)
	switch {
	case err == nil && st.IsDir():
		if err := copyTree(target, tmp); err != nil {
			return err
		}
	case err == nil || errors.Is(err, fs.ErrNotExist):
		// Nothing in the image there (or a file, which mkTarget refuses):
		// an empty directory owned by root.
		if err := os.Mkdir(tmp, 0o755); err != nil {
			return err
		}
	default:
		return err
	}
	if err := os.Rename(tmp, data); err != nil {
		return err
	}
	unix.Sync()
	return nil
}

// copyTree copies the directory src to dst (which must not exist): files,
// directories, symbolic links, device nodes and fifos, with owners, modes
// and times. Hard links become separate copies.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := os.Mkdir(to, 0o700); err != nil {
				return err
			}
		case unix.S_IFREG:
			if err := copyFile(p, to); err != nil {
				return err
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, to); err != nil {
				return err
			}
		default: // devices, fifos, sockets
			if err := unix.Mknod(to, st.Mode, int(st.Rdev)); err != nil {
				return err
			}
		}
		if err := unix.Lchown(to, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			// After chown, which clears setuid and setgid.
			if err := unix.Chmod(to, st.Mode&0o7777); err != nil {
				return err
			}
		}
		ts := []unix.Timespec{st.Atim, st.Mtim}
		return unix.UtimesNanoAt(unix.AT_FDCWD, to, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

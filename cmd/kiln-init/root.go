//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/agent"
)

// Where the parts of an image VM's root are mounted in the initramfs before
// the switch. After it they are no longer reachable from the program's
// root; the overlay keeps them mounted.
const (
	lowerMnt = "/kiln/lower"
	upperMnt = "/kiln/upper"
	newRoot  = "/kiln/root"
)

// diskWait bounds the wait for a disk's device node: the driver probes
// virtio-blk during boot, but devtmpfs may add the node a moment later.
const diskWait = 5 * time.Second

// switchRoot assembles the program's root filesystem and makes it "/": the
// image's read-only root (lower) and a directory tree on the VM's writable
// disk (upper) are joined by overlayfs, the kernel filesystems are moved
// into it, and it replaces the initramfs as root the way switch_root does
// (an initramfs cannot be pivot_root'ed): chdir into it, move it onto "/",
// chroot to ".". Open descriptors (the status port, the console) stay valid,
// and the ports are found again through the moved /sys and /dev.
//
// The image's own /run and /tmp are kept, as docker keeps them (images put
// things there, e.g. /var/run/<service> owned by its user): the initramfs's
// tmpfs mounts there are dropped rather than moved.
//
// The spec's mounts are made on the new root before the switch, while the
// initramfs (where volumes' disks are mounted out of sight) is reachable.
func switchRoot(r *agent.RootSpec, mounts []agent.Mount) error {
	lower, err := findDisk(r.Lower.Serial)
	if err != nil {
		return fmt.Errorf("finding the image disk: %w", err)
	}
	upper, err := findDisk(r.Upper.Serial)
	if err != nil {
		return fmt.Errorf("finding the VM's writable disk: %w", err)
	}
	for _, d := range []string{lowerMnt, upperMnt, newRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	if err := unix.Mount(lower, lowerMnt, r.Lower.FSType, unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mounting the image root (%s on %s, %s): %w", r.Lower.FSType, lower, lowerMnt, err)
	}
	var data string
	if r.Upper.FSType == "ext4" {
		// The disk is a sparse file, so its inode tables already read as
		// zeros: zeroing them in the background would only grow the file.
		data = "noinit_itable"
	}
	if err := unix.Mount(upper, upperMnt, r.Upper.FSType, unix.MS_NOATIME, data); err != nil {
		return fmt.Errorf("mounting the writable disk (%s on %s): %w", r.Upper.FSType, upper, err)
	}
	upperDir, workDir := filepath.Join(upperMnt, "upper"), filepath.Join(upperMnt, "work")
	if err := makeUpperDir(upperDir); err != nil {
		return err
	}
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return fmt.Errorf("creating the overlay work directory: %w", err)
	}
	opts := "lowerdir=" + lowerMnt + ",upperdir=" + upperDir + ",workdir=" + workDir
	if err := unix.Mount("overlay", newRoot, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the root overlay (%s): %w", opts, err)
	}
	if err := setupMounts(mounts, newRoot); err != nil {
		return err
	}
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		dst := newRoot + m
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("creating %s in the new root: %w", m, err)
		}
		if err := unix.Mount(m, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("moving %s into the new root: %w", m, err)
		}
	}
	for _, m := range []string{"/run", "/tmp"} {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			logf("unmounting %s of the initramfs: %v", m, err)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("entering the new root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the new root onto /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("changing root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("entering /: %w", err)
	}
	return nil
}

// makeUpperDir creates the overlay's upper directory on a fresh disk with
// the owner and mode of the image's root directory, since the overlay's
// root directory takes them from the upper one. An existing one (a VM
// started again) is kept as it is.
func makeUpperDir(dir string) error {
	if _, err := os.Lstat(dir); err == nil {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(lowerMnt, &st); err != nil {
		return fmt.Errorf("reading the image root's owner: %w", err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("creating the overlay upper directory: %w", err)
	}
	if err := os.Lchown(dir, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("setting the overlay upper directory's owner: %w", err)
	}
	// Chmod after chown: chown clears setuid/setgid bits.
	if err := unix.Chmod(dir, st.Mode&0o7777); err != nil {
		return fmt.Errorf("setting the overlay upper directory's mode: %w", err)
	}
	return nil
}

// findDisk returns the device node of the virtio block device whose serial
// is serial, waiting a bounded time for it to appear.
func findDisk(serial string) (string, error) {
	deadline := time.Now().Add(diskWait)
	for {
		dev, seen := lookupDisk(serial)
		if dev != "" {
			if _, err := os.Stat(dev); err == nil {
				setReadAhead("/sys/block", filepath.Base(dev), diskReadAheadKB)
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			if dev != "" {
				return "", fmt.Errorf("disk with serial %q is %s, but its device node did not appear", serial, dev)
			}
			if len(seen) == 0 {
				seen = []string{"none"}
			}
			return "", fmt.Errorf("no disk with serial %q (disks: %s)", serial, strings.Join(seen, ", "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// diskReadAheadKB is the read-ahead of every disk kiln-init mounts, in KiB
// (the kernel's default is 128). Under TCG each request costs the guest an
// emulated MMIO exit and an interrupt, far more than the bytes it moves, so
// a sequential read in fewer, larger requests is much faster: a cold read
// of a file on a named volume runs at about twice the speed (bench/volume
// prints both). The kernel grows a file's read-ahead window only while its
// reads are sequential, so random reads do not read 4 MiB each.
const diskReadAheadKB = 4096

// setReadAhead sets the read-ahead of the block device name (under dir,
// /sys/block in the guest). A failure costs speed only, so it is logged.
func setReadAhead(dir, name string, kb int) {
	if err := os.WriteFile(filepath.Join(dir, name, "queue", "read_ahead_kb"), []byte(strconv.Itoa(kb)), 0); err != nil {
		logf("setting the read-ahead of %s: %v", name, err)
	}
}

// lookupDisk reads the serials of the block devices in sysfs and returns
// the device node of the one whose serial is serial, and, for messages,
// every disk seen as "name=serial".
func lookupDisk(serial string) (dev string, seen []string) {
	files, _ := filepath.Glob("/sys/block/*/serial")
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		name := filepath.Base(filepath.Dir(f))
		s := strings.TrimRight(string(b), "\x00\n ")
		seen = append(seen, name+"="+s)
		if s == serial {
			dev = filepath.Join("/dev", name)
		}
	}
	return dev, seen
}

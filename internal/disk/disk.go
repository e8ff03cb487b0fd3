// Package disk makes the ext4 disk images kiln gives VMs (a VM's writable
// layer, a named volume) and finds the host tools that do it.
package disk

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/errdefs"
)

// Ext4Args is the mkfs.ext4 command line for a disk image at path labelled
// label. The file is sparse: lazy_itable_init and lazy_journal_init skip
// writing zeros that a hole already reads as (the guest mounts with
// noinit_itable so its kernel does not write them either), nodiscard skips
// punching holes that are already there. No blocks are reserved for root:
// the disk belongs to the guest's program.
func Ext4Args(path, label string) []string {
	return []string{"-q", "-F", "-m", "0", "-L", label,
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", path}
}

// DefaultFreeReserve is the free space kiln keeps on the filesystem of its
// disk images unless told otherwise: no new disk or volume is made when
// less is free.
const DefaultFreeReserve = 1 << 30

// FreeReserveEnv, when set, is the daemon's free-space reserve unless
// --disk-reserve is given.
const FreeReserveEnv = "KILN_DISK_RESERVE"

// FreeReserve is the free space MakeExt4 requires on the filesystem it
// makes a disk in. Disks are sparse: what they will hold is taken as the
// guests write, and a filesystem that runs out gives every VM on it write
// errors. So kiln refuses new disks while there is still room for the ones
// that exist. Set once, at start.
var FreeReserve int64 = DefaultFreeReserve

// CheckFree returns an error wrapping errdefs.ErrUnavailable when the
// filesystem of dir has less than FreeReserve free for an unprivileged
// writer.
func CheckFree(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("checking free space in %s: %w", dir, err)
	}
	free := int64(st.Bavail) * st.Bsize
	if free < FreeReserve {
		return fmt.Errorf("not enough free space for a new disk in %s: %s free, and kiln keeps %s free for the disks of existing VMs (--disk-reserve or $%s): %w",
			dir, HumanBytes(free), HumanBytes(FreeReserve), FreeReserveEnv, errdefs.ErrUnavailable)
	}
	return nil
}

// HumanBytes spells n in the largest binary unit that keeps it at least 1,
// as "1.5 GiB".
func HumanBytes(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v, i = v/1024, i+1
	}
	return fmt.Sprintf("%.1f %ciB", v, units[i])
}

// SizeName spells a size limit the way the docs state limits: "64 GiB"
// when it is a whole number of one of those units, else in bytes.
func SizeName(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// MakeExt4 creates a sparse file of mib MiB at path holding an empty ext4
// filesystem labelled label, when its filesystem has FreeReserve free. An
// existing file is never overwritten; on an error the caller removes what
// is at path.
func MakeExt4(ctx context.Context, path string, mib int, label string) error {
	mkfs, err := FindTool("mkfs.ext4", "e2fsprogs")
	if err != nil {
		return err
	}
	if err := CheckFree(filepath.Dir(path)); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("creating disk image: %w", err)
	}
	err = f.Truncate(int64(mib) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sizing disk image %s: %w", path, err)
	}
	cmd := exec.CommandContext(ctx, mkfs, Ext4Args(path, label)...)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("making disk image %s with %s: %w: %s", path, mkfs, err, bytes.TrimSpace(out))
	}
	return nil
}

// FindTool finds a host tool in PATH or the sbin directories (which a
// non-root PATH often lacks). The error names the Debian package pkg that
// has it and wraps errdefs.ErrUnavailable.
func FindTool(tool, pkg string) (string, error) {
	if p, err := exec.LookPath(tool); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, tool)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (install the Debian package %s): %w", tool, pkg, errdefs.ErrUnavailable)
}

// DirUsage returns the bytes a directory tree takes on its filesystem
// (allocated blocks, so sparse files count what they hold), not following
// symbolic links; what cannot be read counts as nothing.
func DirUsage(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		}
		return nil
	})
	return n
}

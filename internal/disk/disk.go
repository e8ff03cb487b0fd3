// Package disk makes the ext4 disk images kiln gives VMs (a VM's writable
// layer, a named volume) and finds the host tools that do it.
package disk

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

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

// MakeExt4 creates a sparse file of mib MiB at path holding an empty ext4
// filesystem labelled label. An existing file is never overwritten; on an
// error the caller removes what is at path.
func MakeExt4(ctx context.Context, path string, mib int, label string) error {
	mkfs, err := FindTool("mkfs.ext4", "e2fsprogs")
	if err != nil {
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

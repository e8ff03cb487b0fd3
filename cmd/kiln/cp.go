package main

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/tartree"
)

func newCpCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cp VM:SRC DEST | SRC VM:DEST",
		Short: "Copy files between a running VM and this host",
		Long: `Copy a file or directory between a running VM and this host, as docker cp
does: a directory is copied with everything under it, modes kept; into DEST
when DEST is an existing directory, otherwise as DEST (whose parent must
exist). DEST "-" writes a tar archive to stdout; SRC "-" reads one from stdin
and extracts it into the VM directory DEST.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcVM, src, srcIn := splitVMPath(args[0])
			dstVM, dst, dstIn := splitVMPath(args[1])
			if srcIn == dstIn {
				return errdefs.Invalid(fmt.Sprintf("%s (got %q and %q)", errNoCopy, args[0], args[1]))
			}
			if srcIn && src == "" || dstIn && dst == "" {
				return errdefs.Invalid("kiln cp: the path inside the VM is empty")
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if srcIn {
				if dst != "-" {
					if err := checkHostDest(dst); err != nil {
						return err
					}
				}
				rc, err := cl.CopyFrom(ctx, srcVM, src)
				if err != nil {
					return err
				}
				defer rc.Close()
				if dst == "-" {
					_, err = io.Copy(cmd.OutOrStdout(), rc)
					return err
				}
				return extractHost(tar.NewReader(rc), dst, path.Base(path.Clean("/"+src)))
			}
			if !strings.HasPrefix(dst, "/") {
				return errdefs.Invalid(fmt.Sprintf("kiln cp: the path in the VM %q must be absolute", dst))
			}
			if src == "-" {
				return cl.CopyTo(ctx, dstVM, dst, cmd.InOrStdin())
			}
			if _, err := os.Lstat(src); err != nil {
				return errdefs.Invalid(fmt.Sprintf("kiln cp: %v", err))
			}
			pr, pw := io.Pipe()
			go func() {
				tw := tar.NewWriter(pw)
				err := tartree.Write(tw, src, filepath.Base(filepath.Clean(src)), false)
				if err == nil {
					err = tw.Close()
				}
				pw.CloseWithError(err)
			}()
			err = cl.CopyTo(ctx, dstVM, dst, pr)
			pr.Close()
			return err
		},
	}
}

// checkHostDest refuses a destination whose directory does not exist.
func checkHostDest(dst string) error {
	if st, err := os.Stat(dst); err == nil && st.IsDir() {
		return nil
	}
	if strings.HasSuffix(dst, "/") {
		return errdefs.Invalid(fmt.Sprintf("kiln cp: destination directory %q does not exist", dst))
	}
	if st, err := os.Stat(filepath.Dir(dst)); err != nil || !st.IsDir() {
		return errdefs.Invalid(fmt.Sprintf("kiln cp: the directory of %q does not exist", dst))
	}
	return nil
}

// extractHost extracts an archive from a VM to dst on this host, as
// docker cp: into dst when it is a directory, otherwise as dst. Only
// entries under top (the base name of what was asked for) are taken; they
// never land outside that directory, nor through a link in it.
func extractHost(tr *tar.Reader, dst, top string) error {
	dir, rename := dst, ""
	if st, err := os.Stat(dst); err != nil || !st.IsDir() {
		dir, rename = filepath.Dir(dst), filepath.Base(dst)
	}
	if top == "/" {
		top = "" // the guest's root: docker names its entries after "."
	}
	if err := tartree.Extract(tr, dir, top, rename); err != nil {
		return fmt.Errorf("kiln cp: %w", err)
	}
	return nil
}

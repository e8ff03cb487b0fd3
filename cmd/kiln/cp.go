package main

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/internal/errdefs"
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
				return extractHost(tar.NewReader(rc), dst)
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
				err := tarTree(tw, src, filepath.Base(filepath.Clean(src)))
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

// tarTree writes root (and everything under a directory) named under name.
func tarTree(tw *tar.Writer, root, name string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		h.Name = filepath.ToSlash(filepath.Join(name, rel))
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
}

// extractHost extracts an archive from a VM to dst on this host, as
// docker cp: into dst when it is a directory, otherwise as dst. Entries
// never land outside that directory, nor through a link in it.
func extractHost(tr *tar.Reader, dst string) error {
	dir, rename := dst, ""
	if st, err := os.Stat(dst); err != nil || !st.IsDir() {
		dir, rename = filepath.Dir(dst), filepath.Base(dst)
	}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the archive from the VM: %w", err)
		}
		name := filepath.Clean("/" + h.Name)[1:]
		if name == "" {
			continue
		}
		if rename != "" {
			_, rest, _ := strings.Cut(name, "/")
			name = filepath.Join(rename, rest)
		}
		if err := noLinkBetween(dir, name); err != nil {
			return err
		}
		p := filepath.Join(dir, name)
		mode := fs.FileMode(h.Mode) & fs.ModePerm
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, mode|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			os.Remove(p)
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("writing %s: %w", p, err)
			}
		case tar.TypeSymlink:
			os.Remove(p)
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		}
	}
}

// noLinkBetween refuses name when a directory on its way from dir is a
// symbolic link (an archive could otherwise write through one).
func noLinkBetween(dir, name string) error {
	p := dir
	parts := strings.Split(name, string(filepath.Separator))
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		if st, err := os.Lstat(p); err == nil && st.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("kiln cp: refusing to write %s through the symbolic link %s", name, p)
		}
	}
	return nil
}

// Package tartree writes a file tree as a tar stream and extracts one, for
// kiln cp: the CLI on the host and kiln-init in the guest use the same
// code, so a copy means the same on both sides.
package tartree

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Write writes root, and for a directory everything under it, to tw with
// entry names under name (as docker cp names them: after root's last
// element). Owners are written as numbers when keepOwners is set, else as
// 0; names of owners never are (they mean nothing on the other side).
func Write(tw *tar.Writer, root, name string, keepOwners bool) error {
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
		h.Uname, h.Gname = "", ""
		if !keepOwners {
			h.Uid, h.Gid = 0, 0
		}
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

// Extract extracts tr into dir, as docker cp does: with rename set, the
// archive's top-level entry takes that name. Entries never land outside
// dir, nor through a symbolic link below it, and hard links point only
// inside it. Directories, regular files, symbolic links and hard links are
// made, and missing parent directories; modes are kept, owners not (what
// is extracted belongs to the extracting user, as with docker cp); other
// entries are skipped.
func Extract(tr *tar.Reader, dir, rename string) error {
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		name, ok := entryName(h.Name, rename)
		if !ok {
			continue
		}
		if err := noLinkBetween(dir, name); err != nil {
			return err
		}
		p := filepath.Join(dir, name)
		mode := fs.FileMode(h.Mode) & fs.ModePerm
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
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
		case tar.TypeLink:
			target, ok := entryName(h.Linkname, rename)
			if !ok {
				return fmt.Errorf("hard link %s to %q: not inside the archive", h.Name, h.Linkname)
			}
			if err := noLinkBetween(dir, target); err != nil {
				return err
			}
			os.Remove(p)
			if err := os.Link(filepath.Join(dir, target), p); err != nil {
				return err
			}
		}
	}
}

// entryName is where an archive entry goes below the extraction directory:
// cleaned so that it cannot climb out, its first element replaced by
// rename when set. ok is false for the directory itself.
func entryName(name, rename string) (string, bool) {
	name = filepath.Clean("/" + name)[1:]
	if name == "" {
		return "", false
	}
	if rename != "" {
		_, rest, _ := strings.Cut(name, "/")
		name = filepath.Join(rename, rest)
	}
	return name, true
}

// noLinkBetween refuses name when a directory on its way from dir is a
// symbolic link (an archive could otherwise write through one).
func noLinkBetween(dir, name string) error {
	p := dir
	parts := strings.Split(name, string(filepath.Separator))
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		if st, err := os.Lstat(p); err == nil && st.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("refusing to write %s through the symbolic link %s", name, p)
		}
	}
	return nil
}

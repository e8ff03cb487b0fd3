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
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
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
// archive's top-level entry takes that name. With top set, every entry
// must lie under top (the top-level name the sender was asked for: an
// archive from a VM is the guest's, and a hostile guest would name
// others); any other entry is refused with an error and nothing after it
// is extracted.
//
// Every path is resolved beneath dir by the kernel (openat2 with
// RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS), so nothing is created outside
// dir or through a symbolic link, whether it was in dir before or the
// archive made it. An existing file or link at an entry's place is
// replaced (the link itself, never its target). Hard links point only
// inside the archive. Directories, regular files, symbolic links and hard
// links are made, and missing parent directories; modes are kept, owners
// not (what is extracted belongs to the extracting user, as with docker
// cp); other entries are skipped.
func Extract(tr *tar.Reader, dir, top, rename string) error {
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dir, err)
	}
	defer unix.Close(root)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		if top != "" && !under(h.Name, top) {
			return fmt.Errorf("refusing archive entry %q: not under %q, what was asked for", h.Name, top)
		}
		name, ok := entryName(h.Name, rename)
		if !ok {
			continue
		}
		if err := extractEntry(root, tr, h, name, rename); err != nil {
			return err
		}
	}
}

// under reports whether the archive entry name is top or below it.
func under(name, top string) bool {
	name = path.Clean("/" + name)[1:]
	return name == top || strings.HasPrefix(name, top+"/")
}

func extractEntry(root int, tr *tar.Reader, h *tar.Header, name, rename string) error {
	mode := uint32(fs.FileMode(h.Mode) & fs.ModePerm)
	parent, base, err := mkdirBeneath(root, name)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	switch h.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(parent, base, mode|0o700); err != nil && err != unix.EEXIST {
			return fmt.Errorf("making %s: %w", name, err)
		}
		// An existing entry of that name must be a directory, not a link.
		fd, err := openBeneath(parent, base, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return beneathErr(name, err)
		}
		unix.Close(fd)
	case tar.TypeReg:
		if err := removeBeneath(parent, base); err != nil {
			return fmt.Errorf("replacing %s: %w", name, err)
		}
		fd, err := unix.Openat(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
		if err != nil {
			return fmt.Errorf("creating %s: %w", name, err)
		}
		f := os.NewFile(uintptr(fd), name)
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	case tar.TypeSymlink:
		if err := removeBeneath(parent, base); err != nil {
			return fmt.Errorf("replacing %s: %w", name, err)
		}
		if err := unix.Symlinkat(h.Linkname, parent, base); err != nil {
			return fmt.Errorf("making link %s: %w", name, err)
		}
	case tar.TypeLink:
		target, ok := entryName(h.Linkname, rename)
		if !ok {
			return fmt.Errorf("hard link %s to %q: not inside the archive", h.Name, h.Linkname)
		}
		tparent, tbase, err := parentBeneath(root, target)
		if err != nil {
			return err
		}
		defer unix.Close(tparent)
		if err := removeBeneath(parent, base); err != nil {
			return fmt.Errorf("replacing %s: %w", name, err)
		}
		// No AT_SYMLINK_FOLLOW: a link to a symbolic link links the link.
		if err := unix.Linkat(tparent, tbase, parent, base, 0); err != nil {
			return fmt.Errorf("linking %s to %s: %w", name, target, err)
		}
	}
	return nil
}

// resolveBeneath is how every path of an extraction is resolved: below the
// directory, through no symbolic link.
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

func openBeneath(dirfd int, name string, flags int) (int, error) {
	return unix.Openat2(dirfd, name, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: resolveBeneath})
}

// beneathErr says why a path could not be resolved beneath the directory.
func beneathErr(name string, err error) error {
	switch err {
	case unix.ELOOP:
		return fmt.Errorf("refusing to write %s through a symbolic link", name)
	case unix.EXDEV:
		return fmt.Errorf("refusing to write %s outside the destination", name)
	case unix.ENOTDIR:
		return fmt.Errorf("refusing to write %s: a part of its path is not a directory", name)
	}
	return fmt.Errorf("resolving %s: %w", name, err)
}

// parentBeneath opens the directory name is in (which must exist) and
// returns it with name's last element.
func parentBeneath(root int, name string) (int, string, error) {
	dir, base := path.Split(name)
	if dir == "" {
		dir = "."
	}
	fd, err := openBeneath(root, dir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return -1, "", beneathErr(name, err)
	}
	return fd, base, nil
}

// mkdirBeneath makes the missing directories on name's way (0755) and
// returns its parent directory, open, with its last element.
func mkdirBeneath(root int, name string) (int, string, error) {
	parts := strings.Split(name, "/")
	fd, err := unix.Dup(root)
	if err != nil {
		return -1, "", err
	}
	for _, p := range parts[:len(parts)-1] {
		if err := unix.Mkdirat(fd, p, 0o755); err != nil && err != unix.EEXIST {
			unix.Close(fd)
			return -1, "", fmt.Errorf("making the directories of %s: %w", name, err)
		}
		next, err := openBeneath(fd, p, unix.O_PATH|unix.O_DIRECTORY)
		unix.Close(fd)
		if err != nil {
			return -1, "", beneathErr(name, err)
		}
		fd = next
	}
	return fd, parts[len(parts)-1], nil
}

// removeBeneath removes what is at base in dirfd, if it is not a directory
// (a link is removed itself).
func removeBeneath(dirfd int, base string) error {
	if err := unix.Unlinkat(dirfd, base, 0); err != nil && err != unix.ENOENT {
		return err
	}
	return nil
}

// entryName is where an archive entry goes below the extraction directory:
// cleaned so that it cannot climb out, its first element replaced by
// rename when set. ok is false for the directory itself.
func entryName(name, rename string) (string, bool) {
	name = path.Clean("/" + name)[1:]
	if name == "" {
		return "", false
	}
	if rename != "" {
		_, rest, _ := strings.Cut(name, "/")
		name = path.Join(rename, rest)
	}
	return name, true
}

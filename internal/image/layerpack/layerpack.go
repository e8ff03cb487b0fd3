// Package layerpack packs a directory tree on the host into image layers
// (uncompressed tars), keeping owners, modes, symlinks, hard links and
// device nodes as they are on disk. Tests and benchmarks use it to make
// images of real userlands (a debootstrap'd Debian).
package layerpack

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Dir packs root into n layers. layerOf gives the layer (0..n-1) of each
// top-level entry; entries whose path relative to root is in skip are left
// out, and so are sockets. A hard link stays a link within its layer.
func Dir(root string, n int, layerOf func(top string) int, skip ...string) ([][]byte, error) {
	bufs := make([]bytes.Buffer, n)
	tws := make([]*tar.Writer, n)
	links := make([]map[uint64]string, n)
	for i := range n {
		tws[i], links[i] = tar.NewWriter(&bufs[i]), map[uint64]string{}
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." || slices.Contains(skip, rel) {
			return nil
		}
		top, _, _ := strings.Cut(rel, "/")
		l := layerOf(top)
		if l < 0 || l >= n {
			return fmt.Errorf("layer %d for %s: want 0 to %d", l, top, n-1)
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if info.Mode()&fs.ModeSocket != 0 {
			return nil
		}
		target := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, target)
		if err != nil {
			return err
		}
		h.Name, h.Uname, h.Gname, h.Format = rel, "", "", tar.FormatPAX
		if info.IsDir() {
			h.Name += "/"
		}
		st := info.Sys().(*syscall.Stat_t)
		h.Uid, h.Gid = int(st.Uid), int(st.Gid)
		if info.Mode().IsRegular() && st.Nlink > 1 {
			if first, seen := links[l][st.Ino]; seen {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
			} else {
				links[l][st.Ino] = rel
			}
		}
		if err := tws[l].WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.Copy(tws[l], f); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("packing %s: %w", root, err)
	}
	out := make([][]byte, n)
	for i, tw := range tws {
		if err := tw.Close(); err != nil {
			return nil, fmt.Errorf("packing %s: %w", root, err)
		}
		out[i] = bufs[i].Bytes()
	}
	return out, nil
}

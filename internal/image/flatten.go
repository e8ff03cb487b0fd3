package image

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"math"
	"path"
	"slices"
	"strings"
	"time"
)

// Flattening turns an image's layer tars into one tar of the final tree,
// which a filesystem builder (tar2sqfs) turns into an image without ever
// creating a file on the host. That is what lets ownership, device nodes,
// setuid bits and xattrs come through exactly as the layers say, without
// root on the host and without a layer ever being able to write outside
// its tree: nothing is extracted.
//
// It takes two passes over the layers, bottom to top:
//
//  1. Read every header and build the final tree in memory, applying each
//     entry as an extractor would: later entries replace earlier ones,
//     whiteouts (".wh.name") and opaque markers (".wh..wh..opq") hide what
//     lower layers put there, hard links share an inode, and a path whose
//     parent is a symlink is resolved through that symlink inside the tree,
//     never outside it (as containerd does). File contents are skipped.
//  2. Write the tree: directories and other content-less entries straight
//     from memory, parents first; then regular files, re-reading each
//     layer that still owns a file in the final tree and copying exactly
//     those contents; then hard links.
//
// Paths are normalised the way docker does: leading "/" and "./" are
// dropped, so absolute names land relative to the root; a name that still
// climbs above the root after cleaning ("../x", "a/../../x") is rejected.
// Symlink targets are stored as written: the guest resolves them in its own
// root, and the flattener itself only follows them inside the tree.

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
	maxSymlinkHops = 40 // Linux's MAXSYMLINKS
	maxNameLen     = 255
)

// limits bounds what layer streams can make the flattener do.
type limits struct {
	// maxTotal bounds the bytes of entry content read from all layers.
	maxTotal int64
	// maxFile bounds one file's size.
	maxFile int64
	// maxEntries bounds tar entries across all layers (memory).
	maxEntries int
	// maxPath bounds a path's length in bytes.
	maxPath int
}

var defaultLimits = limits{
	maxTotal:   64 << 30,
	maxFile:    64 << 30,
	maxEntries: 8 << 20,
	maxPath:    4096,
}

// layerSource is one layer's uncompressed tar stream. open is called once
// per pass; both calls must yield the same bytes (layers are
// content-addressed, so they do). Close after reading to EOF may report a
// digest mismatch.
type layerSource struct {
	name string // for messages, e.g. the layer digest
	open func() (io.ReadCloser, error)
}

// inode is a file's content and metadata; hard links share one.
type inode struct {
	hdr   tar.Header // normalised: Name unset, Typeflag canonical
	layer int        // which layer holds the content (regular files)
	ord   int        // which entry of that layer
	// origin is the node the inode was created at. If it survives it is
	// the name written with the content, so a link keeps pointing at the
	// name the image author gave the file.
	origin *node
	// primary is the path written with the content; any other path of
	// the inode becomes a hard link to it. Set by write.
	primary string
}

// node is one name in the tree.
type node struct {
	name     string
	parent   *node
	children map[string]*node // non-nil exactly for directories
	ino      *inode
	// layer is the last layer that created or put something under this
	// node. Whiteouts and opaque markers of layer L hide only nodes with
	// layer < L, so what layer L itself adds survives its own whiteouts,
	// whatever order the tar lists them in.
	layer int
}

func (n *node) isDir() bool     { return n.children != nil }
func (n *node) isSymlink() bool { return n.ino.hdr.Typeflag == tar.TypeSymlink }

// tree is the merged filesystem being built by pass 1.
type tree struct {
	root    *node
	lim     limits
	total   int64
	entries int
}

func newTree(lim limits) *tree {
	return &tree{
		lim: lim,
		root: &node{
			children: map[string]*node{},
			ino:      &inode{hdr: implicitDir()},
			layer:    -1,
		},
	}
}

// implicitDir is the header of a directory no layer declared, as docker
// creates them (0755 root:root).
func implicitDir() tar.Header {
	return tar.Header{Typeflag: tar.TypeDir, Mode: 0o755, Format: tar.FormatPAX}
}

// flatten writes the merged tree of layers (bottom first) to w as a tar.
func flatten(ctx context.Context, layers []layerSource, w io.Writer, lim limits) error {
	t := newTree(lim)
	for i, l := range layers {
		if err := t.scan(ctx, i, l); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i, l.name, err)
		}
	}
	return t.write(ctx, layers, w)
}

// scan is pass 1 for one layer.
func (t *tree) scan(ctx context.Context, layer int, l layerSource) (err error) {
	rc, err := l.open()
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			rc.Close()
		}
	}()
	tr := tar.NewReader(rc)
	last := "(start of layer)"
	for ord := 0; ; ord++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading tar after entry %q: %w: %w", last, ErrCorrupt, err)
		}
		last = hdr.Name
		if err := t.apply(layer, ord, hdr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	// Read to the end and close, so the source can check the digests of
	// everything it served.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("reading tar: %w", err)
	}
	closed = true
	return rc.Close()
}

// canonicalType maps the tar types that mean "regular file" to TypeReg
// and rejects those this package does not handle.
func canonicalType(h *tar.Header) (byte, error) {
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeCont, tar.TypeGNUSparse:
		return tar.TypeReg, nil
	case tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return h.Typeflag, nil
	}
	return 0, fmt.Errorf("tar entry type %q: %w", h.Typeflag, ErrUnsupported)
}

// splitName normalises a tar entry name into path components; an empty
// result is the root.
func (t *tree) splitName(name string) ([]string, error) {
	if len(name) > t.lim.maxPath {
		return nil, fmt.Errorf("path longer than %d bytes: %w", t.lim.maxPath, ErrInvalidArgument)
	}
	if strings.ContainsRune(name, 0) {
		return nil, fmt.Errorf("NUL byte in path: %w", ErrInvalidArgument)
	}
	p := path.Clean(strings.TrimLeft(name, "/"))
	if p == ".." || strings.HasPrefix(p, "../") {
		return nil, fmt.Errorf("path escapes the root: %w", ErrInvalidArgument)
	}
	if p == "." {
		return nil, nil
	}
	comps := strings.Split(p, "/")
	for _, c := range comps {
		if len(c) > maxNameLen {
			return nil, fmt.Errorf("path component longer than %d bytes: %w", maxNameLen, ErrInvalidArgument)
		}
	}
	return comps, nil
}

// normHeader keeps what the filesystem records about an entry: type,
// permission bits including setuid/setgid/sticky, numeric owner, mtime,
// link target, device numbers and the xattrs squashfs can store.
func normHeader(h *tar.Header, typ byte) (tar.Header, error) {
	if h.Uid < 0 || h.Gid < 0 || int64(h.Uid) > math.MaxUint32-1 || int64(h.Gid) > math.MaxUint32-1 {
		return tar.Header{}, fmt.Errorf("owner %d:%d out of range: %w", h.Uid, h.Gid, ErrInvalidArgument)
	}
	out := tar.Header{
		Typeflag: typ,
		Mode:     h.Mode & 0o7777,
		Uid:      h.Uid,
		Gid:      h.Gid,
		ModTime:  clampTime(h.ModTime),
		Format:   tar.FormatPAX,
	}
	switch typ {
	case tar.TypeReg:
		out.Size = h.Size
	case tar.TypeSymlink:
		out.Linkname = h.Linkname
	case tar.TypeChar, tar.TypeBlock:
		if h.Devmajor < 0 || h.Devminor < 0 || h.Devmajor > 0xfff || h.Devminor > 0xfffff {
			return tar.Header{}, fmt.Errorf("device %d:%d out of range: %w", h.Devmajor, h.Devminor, ErrInvalidArgument)
		}
		out.Devmajor, out.Devminor = h.Devmajor, h.Devminor
	}
	for k, v := range h.PAXRecords {
		x, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || !xattrSupported(x) {
			continue
		}
		if out.PAXRecords == nil {
			out.PAXRecords = map[string]string{}
		}
		out.PAXRecords[k] = v
	}
	return out, nil
}

// xattrSupported reports whether squashfs can store an xattr: it has
// namespaces only for user, trusted and security (which covers file
// capabilities). POSIX ACLs (system.*) are dropped.
func xattrSupported(name string) bool {
	for _, p := range []string{"user.", "trusted.", "security."} {
		if strings.HasPrefix(name, p) && len(name) > len(p) {
			return true
		}
	}
	return false
}

// clampTime fits t into squashfs's unsigned 32-bit seconds.
func clampTime(t time.Time) time.Time {
	s := t.Unix()
	switch {
	case s < 0:
		s = 0
	case s > math.MaxUint32:
		s = math.MaxUint32
	}
	return time.Unix(s, 0).UTC()
}

// apply adds one layer entry to the tree.
func (t *tree) apply(layer, ord int, h *tar.Header) error {
	t.entries++
	if t.entries > t.lim.maxEntries {
		return fmt.Errorf("more than %d entries: %w", t.lim.maxEntries, ErrInvalidArgument)
	}
	if h.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	if h.Size < 0 {
		return fmt.Errorf("negative size: %w", ErrCorrupt)
	}
	if h.Size > t.lim.maxFile {
		return fmt.Errorf("size %d exceeds the %d-byte file limit: %w", h.Size, t.lim.maxFile, ErrInvalidArgument)
	}
	t.total += h.Size
	if t.total > t.lim.maxTotal {
		return fmt.Errorf("layers hold more than %d bytes: %w", t.lim.maxTotal, ErrInvalidArgument)
	}
	comps, err := t.splitName(h.Name)
	if err != nil {
		return err
	}
	typ, err := canonicalType(h)
	if err != nil {
		return err
	}
	hdr, err := normHeader(h, typ)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		if typ != tar.TypeDir {
			return fmt.Errorf("root entry is not a directory: %w", ErrInvalidArgument)
		}
		t.root.ino.hdr = hdr
		return nil
	}
	dir, base := comps[:len(comps)-1], comps[len(comps)-1]

	if strings.HasPrefix(base, whiteoutPrefix) {
		hops := 0
		parent, err := t.walk(t.root, dir, layer, false, &hops)
		if err != nil || parent == nil {
			return err // nothing to hide
		}
		switch {
		case base == opaqueMarker:
			hideLower(parent, layer)
		case strings.HasPrefix(base, whiteoutMeta):
			// Other aufs metadata (.wh..wh.plnk and friends): not content.
		default:
			target := base[len(whiteoutPrefix):]
			if n := parent.children[target]; n != nil && n.layer < layer {
				delete(parent.children, target)
			}
		}
		return nil
	}

	var linked *inode
	switch typ {
	case tar.TypeLink:
		if linked, err = t.linkTarget(h.Linkname, layer); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if h.Linkname == "" {
			return fmt.Errorf("symlink with empty target: %w", ErrInvalidArgument)
		}
	}

	hops := 0
	parent, err := t.walk(t.root, dir, layer, true, &hops)
	if err != nil {
		return err
	}
	for p := parent; p != nil; p = p.parent {
		p.layer = max(p.layer, layer)
	}
	if old := parent.children[base]; old != nil && old.isDir() && typ == tar.TypeDir {
		// A directory over a directory merges: new metadata, old children.
		old.ino.hdr = hdr
		old.layer = layer
		return nil
	}
	n := &node{name: base, parent: parent, layer: layer}
	switch typ {
	case tar.TypeDir:
		n.children = map[string]*node{}
		n.ino = &inode{hdr: hdr}
	case tar.TypeLink:
		n.ino = linked
	default:
		n.ino = &inode{hdr: hdr, layer: layer, ord: ord, origin: n}
	}
	// Anything else already there (a file, or a directory replaced by a
	// non-directory, with its whole subtree) is gone, as when extracting.
	parent.children[base] = n
	return nil
}

// linkTarget resolves a hard link's target to the inode it shares.
func (t *tree) linkTarget(name string, layer int) (*inode, error) {
	comps, err := t.splitName(name)
	if err != nil {
		return nil, fmt.Errorf("hard link target %q: %w", name, err)
	}
	if len(comps) == 0 {
		return nil, fmt.Errorf("hard link to the root: %w", ErrInvalidArgument)
	}
	hops := 0
	parent, err := t.walk(t.root, comps[:len(comps)-1], layer, false, &hops)
	if err != nil {
		return nil, fmt.Errorf("hard link target %q: %w", name, err)
	}
	var n *node
	if parent != nil {
		n = parent.children[comps[len(comps)-1]]
	}
	if n == nil {
		return nil, fmt.Errorf("hard link target %q does not exist: %w", name, ErrInvalidArgument)
	}
	if n.isDir() {
		return nil, fmt.Errorf("hard link target %q is a directory: %w", name, ErrInvalidArgument)
	}
	return n.ino, nil
}

// walk resolves the directory comps names, starting at start, following
// symlinks inside the tree: an absolute target restarts at the tree's root
// and ".." never climbs above it, so no path can resolve outside the tree.
// Missing directories are created (as an extractor's MkdirAll would) when
// create is set; otherwise walk returns nil, nil for them.
func (t *tree) walk(start *node, comps []string, layer int, create bool, hops *int) (*node, error) {
	cur := start
	for _, c := range comps {
		switch c {
		case "", ".":
			continue
		case "..":
			if cur.parent != nil {
				cur = cur.parent
			}
			continue
		}
		child := cur.children[c]
		if child == nil {
			if !create {
				return nil, nil
			}
			child = &node{name: c, parent: cur, children: map[string]*node{}, ino: &inode{hdr: implicitDir()}, layer: layer}
			cur.children[c] = child
		}
		if child.isSymlink() {
			*hops++
			if *hops > maxSymlinkHops {
				return nil, fmt.Errorf("too many levels of symbolic links at %q: %w", c, ErrInvalidArgument)
			}
			target := child.ino.hdr.Linkname
			from := cur
			if strings.HasPrefix(target, "/") {
				from = t.root
			}
			resolved, err := t.walk(from, strings.Split(target, "/"), layer, create, hops)
			if err != nil || resolved == nil {
				return resolved, err
			}
			child = resolved
		}
		if !child.isDir() {
			return nil, fmt.Errorf("parent %q is not a directory: %w", c, ErrInvalidArgument)
		}
		cur = child
	}
	return cur, nil
}

// hideLower applies an opaque marker of layer to dir: everything lower
// layers put under dir goes; what this layer put there stays.
func hideLower(dir *node, layer int) {
	for name, c := range dir.children {
		if c.layer < layer {
			delete(dir.children, name)
		} else if c.isDir() {
			hideLower(c, layer)
		}
	}
}

// treeFile is an inode at one of its final paths.
type treeFile struct {
	path string
	ino  *inode
}

// write is pass 2: it emits the tree as one tar. Preconditions: all layers
// were scanned into t.
func (t *tree) write(ctx context.Context, layers []layerSource, w io.Writer) error {
	tw := tar.NewWriter(w)
	files := make([]map[int]treeFile, len(layers)) // layer -> entry ordinal -> file
	var links []treeFile                           // secondary names of shared inodes

	root := t.root.ino.hdr
	root.Name = "./"
	if err := tw.WriteHeader(&root); err != nil {
		return fmt.Errorf("writing root: %w", err)
	}
	// Collect the live names, parents before children, in a stable order.
	type liveNode struct {
		path string
		n    *node
	}
	var live []liveNode
	var collect func(dir *node, prefix string)
	collect = func(dir *node, prefix string) {
		names := make([]string, 0, len(dir.children))
		for n := range dir.children {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, name := range names {
			c := dir.children[name]
			live = append(live, liveNode{path: prefix + name, n: c})
			if c.isDir() {
				collect(c, prefix+name+"/")
			}
		}
	}
	collect(t.root, "")
	for _, l := range live {
		l.n.ino.primary = ""
	}
	for _, l := range live {
		if l.n.ino.origin == l.n {
			l.n.ino.primary = l.path
		}
	}
	for _, l := range live {
		ino := l.n.ino
		if ino.primary == "" {
			ino.primary = l.path // the original name is gone; first wins
		}
		if ino.primary != l.path {
			links = append(links, treeFile{path: l.path, ino: ino})
			continue
		}
		switch ino.hdr.Typeflag {
		case tar.TypeReg:
			if files[ino.layer] == nil {
				files[ino.layer] = map[int]treeFile{}
			}
			files[ino.layer][ino.ord] = treeFile{path: l.path, ino: ino}
		default:
			h := ino.hdr
			h.Name = l.path
			if ino.hdr.Typeflag == tar.TypeDir {
				h.Name += "/"
			}
			if err := tw.WriteHeader(&h); err != nil {
				return fmt.Errorf("writing %q: %w", l.path, err)
			}
		}
	}
	for i, want := range files {
		if len(want) == 0 {
			continue // every file of this layer was replaced or deleted
		}
		if err := copyFiles(ctx, tw, layers[i], want); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i, layers[i].name, err)
		}
	}
	for _, l := range links {
		h := l.ino.hdr
		h.Typeflag = tar.TypeLink
		h.Name = l.path
		h.Linkname = l.ino.primary
		h.Size = 0
		h.Devmajor, h.Devminor = 0, 0
		h.PAXRecords = nil // the xattrs belong to the inode, written once
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("writing %q: %w", l.path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("finishing tar: %w", err)
	}
	return nil
}

// copyFiles re-reads one layer and copies the contents of the entries in
// want (by ordinal) under their final paths.
func copyFiles(ctx context.Context, tw *tar.Writer, l layerSource, want map[int]treeFile) error {
	rc, err := l.open()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	left := len(want)
	for ord := 0; left > 0; ord++ {
		hdr, err := tr.Next()
		if err != nil {
			// The layer was complete in pass 1; anything else means it
			// changed underneath us.
			return fmt.Errorf("re-reading tar at entry %d: %w: %w", ord, ErrCorrupt, err)
		}
		fl, ok := want[ord]
		if !ok {
			continue
		}
		if hdr.Size != fl.ino.hdr.Size {
			return fmt.Errorf("entry %q changed size between passes: %w", hdr.Name, ErrCorrupt)
		}
		h := fl.ino.hdr
		h.Name = fl.path
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("writing %q: %w", fl.path, err)
		}
		if _, err := io.Copy(tw, &ctxReader{ctx: ctx, r: tr}); err != nil {
			return fmt.Errorf("copying %q: %w", hdr.Name, err)
		}
		left--
	}
	return nil
}

package image

import (
	"archive/tar"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"slices"
	"strings"
	"time"

	"kiln.dev/kiln/internal/disk"
)

// Flattening turns an image's layer tars into one tar of the final tree,
// which a filesystem builder (tar2sqfs) turns into an image without ever
// creating a file on the host. That is what lets ownership, device nodes,
// setuid bits and xattrs come through exactly as the layers say, without
// root on the host and without a layer ever being able to write outside
// its tree: nothing is extracted.
//
// Each layer is read (and so decompressed) once, bottom to top; the tree
// is written after the last one:
//
//  1. Read every entry and build the final tree in memory, applying each
//     entry as an extractor would: later entries replace earlier ones,
//     whiteouts (".wh.name") and opaque markers (".wh..wh..opq") hide what
//     lower layers put there, hard links share an inode, and a path whose
//     parent is a symlink is resolved through that symlink inside the tree,
//     never outside it (as containerd does). A regular file's content is
//     appended to the spool, a temporary file, and its inode records
//     where; the layer's digests are checked at its end.
//  2. Write the tree: directories and other content-less entries straight
//     from memory, parents first; then the regular files that survived,
//     their contents read back from the spool in the order they were
//     spooled; then hard links.
//
// Reading a layer twice instead (headers, then the contents that
// survived) decompressed every layer that still owned a file twice, which
// was most of the time a build took; the spool costs a write and a read
// of the files' bytes, which limits.maxTotal bounds, and the build's
// free-space guard watches it as it does the squashfs.
//
// Paths are normalised the way docker does: leading "/" and "./" are
// dropped, so absolute names land relative to the root; a name that still
// climbs above the root after cleaning ("../x", "a/../../x") is rejected.
// Symlink targets are stored as written: the guest resolves them in its own
// root, and the flattener itself only follows them inside the tree.
//
// Layers are hostile input, so everything pass 1 keeps is bounded (see
// limits): the entries, including directories created for undeclared
// parents, and the bytes of names, symlink targets and xattrs, counted as
// they arrive. Pass 2 keeps only the live nodes and spells each path out
// from its parents as it writes it, so no path is held for long.

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
	maxSymlinkHops = 40  // Linux's MAXSYMLINKS
	maxNameLen     = 255 // Linux's NAME_MAX
	maxXattrName   = 255 // Linux's XATTR_NAME_MAX
	// zstdMaxWindow is the largest window a zstd layer may ask the
	// decoder to keep in memory: the zstd tool's own default limit
	// (window log 27), where the library's default would allow 512 MiB.
	zstdMaxWindow = 128 << 20
)

// limits bounds what a layer, which may come from an attacker, can make
// building a root filesystem cost: the memory held by the tree between the
// two passes, the bytes decompressed, the bytes written. defaultLimits
// holds the values kiln uses; tests lower them. Going past one is an
// ErrTooLarge error naming the layer (and the entry, where there is one),
// the limit and the value that passed it.
type limits struct {
	// maxLayer bounds the uncompressed size of one layer's stream, tar
	// padding and anything after the tar's end included: a decompression
	// bomb stops there instead of being read to its end.
	maxLayer int64
	// maxRatio bounds how many times a compressed layer may expand once
	// more than ratioFloor bytes came out of it. Real file trees
	// compress a few times, text some tens of times; only long runs of
	// one byte (a bomb, or a preallocated file of zeros) reach a
	// thousand. The floor leaves small layers, which are mostly tar
	// padding, free to expand as they like.
	maxRatio   int64
	ratioFloor int64
	// maxTotal bounds the bytes of entry content read from all layers,
	// and so what the spool holds.
	maxTotal int64
	// maxFile bounds one file's size.
	maxFile int64
	// maxEntries bounds the tree's entries: every tar entry of every
	// layer, whiteouts included, and every directory created because an
	// entry's parent was never declared. Each costs a few hundred bytes
	// until the tree is written.
	maxEntries int
	// maxMeta bounds the bytes of names, symlink targets and xattrs
	// (names and values) the tree holds, added up as entries arrive, in
	// every layer: what a later layer replaces still counts, so the
	// bound holds whatever order the layers add and remove things in.
	maxMeta int64
	// maxPath bounds a path's length in bytes: an entry's name, a hard
	// link's target, and the path an entry lands at once symlinks in its
	// parents are followed (which is what the tree writes out).
	maxPath int
	// maxLink bounds a symlink's target in bytes (Linux's PATH_MAX:
	// symlink(2) refuses longer ones).
	maxLink int
	// maxXattr bounds one xattr's value in bytes (Linux's
	// XATTR_SIZE_MAX); its name is bounded by maxXattrName.
	maxXattr int
}

// defaultLimits are the limits every Store starts with. A tree at
// maxEntries holds about 400 MiB between the passes, plus maxMeta (see
// FORMAT.md).
var defaultLimits = limits{
	maxLayer:   64 << 30,
	maxRatio:   1000,
	ratioFloor: 1 << 30,
	maxTotal:   64 << 30,
	maxFile:    64 << 30,
	maxEntries: 1 << 20,
	maxMeta:    64 << 20,
	maxPath:    4096,
	maxLink:    4096,
	maxXattr:   64 << 10,
}

// layerSource is one layer's uncompressed tar stream. open is called once;
// Close after reading to EOF may report a digest mismatch.
type layerSource struct {
	name string // for messages, e.g. the layer digest
	open func() (io.ReadCloser, error)
}

// inode is a file's content and metadata; hard links share one.
type inode struct {
	hdr tar.Header // normalised: Name unset, Typeflag canonical
	// off is where the content of a regular file starts in the spool.
	off int64
	// origin is the node the inode was created at. If it survives it is
	// the name written with the content, so a link keeps pointing at the
	// name the image author gave the file.
	origin *node
	// primary is the node written with the content; any other node of
	// the inode becomes a hard link to it. Set by write.
	primary *node
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
	// plen is the length of the node's path from the root ("a/b" is 3),
	// so that the path can be spelt out when it is written instead of
	// being held for every node.
	plen int
}

func (n *node) isDir() bool     { return n.children != nil }
func (n *node) isSymlink() bool { return n.ino.hdr.Typeflag == tar.TypeSymlink }

// spool holds the contents of the layers' regular files from the pass
// that reads them to the one that writes the tree: a temporary file,
// unlinked (see Store.buildSquashfs), or memory in tests.
type spool interface {
	io.Writer
	io.ReaderAt
}

// tree is the merged filesystem being built by pass 1.
type tree struct {
	root    *node
	lim     limits
	spool   spool
	spooled int64 // bytes written to spool
	total   int64 // bytes of entry content, against lim.maxTotal
	entries int   // entries, against lim.maxEntries
	meta    int64 // bytes of names, symlink targets and xattrs, against lim.maxMeta
}

func newTree(lim limits, sp spool) *tree {
	return &tree{
		lim:   lim,
		spool: sp,
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

// flatten writes the merged tree of layers (bottom first) to w as a tar,
// keeping the files' contents in sp meanwhile. Nothing is written to w
// before every layer was read and its digests checked.
func flatten(ctx context.Context, layers []layerSource, w io.Writer, lim limits, sp spool) error {
	t := newTree(lim, sp)
	for i, l := range layers {
		if err := t.scan(ctx, i, l); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i, l.name, err)
		}
	}
	return t.write(ctx, w)
}

// scan is pass 1 for one layer: its entries go into the tree, its files'
// contents into the spool.
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
	// Every read checks ctx: skipping a large entry's content happens
	// inside tr.Next.
	cr := &ctxReader{ctx: ctx, r: rc}
	tr := tar.NewReader(cr)
	// One buffer for the layer: io.Copy would allocate one per file, and
	// a layer may hold a million small files.
	buf := make([]byte, 32<<10)
	last := "(start of layer)"
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, ErrTooLarge) || ctx.Err() != nil {
				return fmt.Errorf("reading tar after entry %q: %w", last, err)
			}
			return fmt.Errorf("reading tar after entry %q: %w: %w", last, ErrCorrupt, err)
		}
		last = hdr.Name
		ino, err := t.apply(layer, hdr)
		if err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		if ino == nil || ino.hdr.Size == 0 {
			continue // no content to keep
		}
		ino.off = t.spooled
		sw := &errWriter{w: t.spool}
		n, err := io.CopyBuffer(sw, io.LimitReader(tr, ino.hdr.Size), buf)
		t.spooled += n
		switch {
		case sw.err != nil:
			return fmt.Errorf("spooling entry %q: %w", hdr.Name, sw.err)
		case err != nil && (errors.Is(err, ErrTooLarge) || ctx.Err() != nil):
			return fmt.Errorf("reading entry %q: %w", hdr.Name, err)
		case err != nil:
			return fmt.Errorf("reading entry %q: %w: %w", hdr.Name, ErrCorrupt, err)
		case n != ino.hdr.Size:
			return fmt.Errorf("entry %q: %d bytes of %d: %w", hdr.Name, n, ino.hdr.Size, ErrCorrupt)
		}
	}
	// Read to the end and close, so the source can check the digests of
	// everything it served. The source bounds how much that is.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return fmt.Errorf("reading tar: %w", err)
	}
	closed = true
	return rc.Close()
}

// errWriter passes writes to w and keeps the error of a failed one, so
// that a copy can tell its writer's errors from its reader's.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil {
		e.err = err
	}
	return n, err
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
		return nil, fmt.Errorf("path of %d bytes, over the %d-byte limit: %w", len(name), t.lim.maxPath, ErrTooLarge)
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

// addEntry counts one more entry of the tree against its limit.
func (t *tree) addEntry() error {
	t.entries++
	if t.entries > t.lim.maxEntries {
		return fmt.Errorf("more than %d entries (tar entries of all layers, and the directories they imply): %w", t.lim.maxEntries, ErrTooLarge)
	}
	return nil
}

// addMeta counts n more bytes of names, symlink targets and xattrs held
// by the tree against their limit.
func (t *tree) addMeta(n int) error {
	t.meta += int64(n)
	if t.meta > t.lim.maxMeta {
		return fmt.Errorf("names, symlink targets and xattrs of the layers add up to %d bytes, over the %s limit on what flattening holds in memory: %w",
			t.meta, disk.SizeName(t.lim.maxMeta), ErrTooLarge)
	}
	return nil
}

// checkMeta checks what the tree is about to keep of an entry named name
// (its last component) with header hdr, and counts it.
func (t *tree) checkMeta(name string, hdr *tar.Header) error {
	n := len(name)
	if hdr.Typeflag == tar.TypeSymlink {
		if len(hdr.Linkname) > t.lim.maxLink {
			return fmt.Errorf("symlink target of %d bytes, over the %d-byte limit: %w", len(hdr.Linkname), t.lim.maxLink, ErrTooLarge)
		}
		n += len(hdr.Linkname)
	}
	for k, v := range hdr.PAXRecords {
		x := strings.TrimPrefix(k, "SCHILY.xattr.")
		if len(x) > maxXattrName {
			return fmt.Errorf("xattr name of %d bytes, over the %d-byte limit: %w", len(x), maxXattrName, ErrTooLarge)
		}
		if len(v) > t.lim.maxXattr {
			return fmt.Errorf("xattr %s of %d bytes, over the %s limit: %w", x, len(v), disk.SizeName(int64(t.lim.maxXattr)), ErrTooLarge)
		}
		n += len(x) + len(v)
	}
	return t.addMeta(n)
}

// newNode makes the node name under parent, checking the length of the
// path it lands at (through any symlinks followed to reach parent).
func (t *tree) newNode(parent *node, name string, layer int) (*node, error) {
	if len(name) > maxNameLen {
		return nil, fmt.Errorf("path component of %d bytes, over the %d-byte limit: %w", len(name), maxNameLen, ErrTooLarge)
	}
	plen := parent.plen + len(name)
	if parent != t.root {
		plen++
	}
	if plen > t.lim.maxPath {
		return nil, fmt.Errorf("%q lands at a path of %d bytes once symlinks are followed, over the %d-byte limit: %w", name, plen, t.lim.maxPath, ErrTooLarge)
	}
	return &node{name: name, parent: parent, layer: layer, plen: plen}, nil
}

// pathOf spells out n's path from the root ("a/b"; "" for the root).
func pathOf(n *node) string {
	b := make([]byte, n.plen)
	i := len(b)
	for ; n.parent != nil; n = n.parent {
		i -= len(n.name)
		copy(b[i:], n.name)
		if i > 0 {
			i--
			b[i] = '/'
		}
	}
	return string(b)
}

// apply adds one layer entry to the tree. It returns the inode of a
// regular file it made, whose content the caller spools.
func (t *tree) apply(layer int, h *tar.Header) (*inode, error) {
	if err := t.addEntry(); err != nil {
		return nil, err
	}
	if h.Typeflag == tar.TypeXGlobalHeader {
		return nil, nil
	}
	if h.Size < 0 {
		return nil, fmt.Errorf("negative size: %w", ErrCorrupt)
	}
	if h.Size > t.lim.maxFile {
		return nil, fmt.Errorf("size %d, over the %s limit for one file: %w", h.Size, disk.SizeName(t.lim.maxFile), ErrTooLarge)
	}
	t.total += h.Size
	if t.total > t.lim.maxTotal {
		return nil, fmt.Errorf("files of the layers add up to %d bytes, over the %s limit: %w", t.total, disk.SizeName(t.lim.maxTotal), ErrTooLarge)
	}
	comps, err := t.splitName(h.Name)
	if err != nil {
		return nil, err
	}
	typ, err := canonicalType(h)
	if err != nil {
		return nil, err
	}
	hdr, err := normHeader(h, typ)
	if err != nil {
		return nil, err
	}
	if len(comps) == 0 {
		if typ != tar.TypeDir {
			return nil, fmt.Errorf("root entry is not a directory: %w", ErrInvalidArgument)
		}
		if err := t.checkMeta("", &hdr); err != nil {
			return nil, err
		}
		t.root.ino.hdr = hdr
		return nil, nil
	}
	dir, base := comps[:len(comps)-1], comps[len(comps)-1]

	if strings.HasPrefix(base, whiteoutPrefix) {
		hops := 0
		parent, err := t.walk(t.root, dir, layer, false, &hops)
		if err != nil || parent == nil {
			return nil, err // nothing to hide
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
		return nil, nil
	}

	if err := t.checkMeta(base, &hdr); err != nil {
		return nil, err
	}
	var linked *inode
	switch typ {
	case tar.TypeLink:
		if linked, err = t.linkTarget(h.Linkname, layer); err != nil {
			return nil, err
		}
	case tar.TypeSymlink:
		if h.Linkname == "" {
			return nil, fmt.Errorf("symlink with empty target: %w", ErrInvalidArgument)
		}
	}

	hops := 0
	parent, err := t.walk(t.root, dir, layer, true, &hops)
	if err != nil {
		return nil, err
	}
	for p := parent; p != nil; p = p.parent {
		p.layer = max(p.layer, layer)
	}
	if old := parent.children[base]; old != nil && old.isDir() && typ == tar.TypeDir {
		// A directory over a directory merges: new metadata, old children.
		old.ino.hdr = hdr
		old.layer = layer
		return nil, nil
	}
	n, err := t.newNode(parent, base, layer)
	if err != nil {
		return nil, err
	}
	switch typ {
	case tar.TypeDir:
		n.children = map[string]*node{}
		n.ino = &inode{hdr: hdr}
	case tar.TypeLink:
		n.ino = linked
	default:
		n.ino = &inode{hdr: hdr, origin: n}
	}
	// Anything else already there (a file, or a directory replaced by a
	// non-directory, with its whole subtree) is gone, as when extracting.
	parent.children[base] = n
	if typ == tar.TypeReg {
		return n.ino, nil
	}
	return nil, nil
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
			// A directory no entry declared still costs what an entry
			// does: a path of one-byte names makes two thousand.
			if err := t.addEntry(); err != nil {
				return nil, err
			}
			if err := t.addMeta(len(c)); err != nil {
				return nil, err
			}
			n, err := t.newNode(cur, c, layer)
			if err != nil {
				return nil, err
			}
			child, n.children, n.ino = n, map[string]*node{}, &inode{hdr: implicitDir()}
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

// write is pass 2: it emits the tree as one tar. Preconditions: all layers
// were scanned into t.
//
// It holds the live nodes and spells out each path only as it writes it,
// so its memory grows with the entry count (bounded by lim.maxEntries),
// not with the paths' lengths.
func (t *tree) write(ctx context.Context, w io.Writer) error {
	tw := tar.NewWriter(w)
	var (
		files []*node // regular files, written with their content
		links []*node // secondary names of shared inodes
	)
	root := t.root.ino.hdr
	root.Name = "./"
	if err := tw.WriteHeader(&root); err != nil {
		return fmt.Errorf("writing root: %w", err)
	}
	// Collect the live names, parents before children, in a stable order.
	var live []*node
	var collect func(dir *node)
	collect = func(dir *node) {
		names := make([]string, 0, len(dir.children))
		for n := range dir.children {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, name := range names {
			c := dir.children[name]
			live = append(live, c)
			if c.isDir() {
				collect(c)
			}
		}
	}
	collect(t.root)
	for _, n := range live {
		n.ino.primary = nil
	}
	for _, n := range live {
		if n.ino.origin == n {
			n.ino.primary = n
		}
	}
	for _, n := range live {
		ino := n.ino
		if ino.primary == nil {
			ino.primary = n // the original name is gone; first wins
		}
		if ino.primary != n {
			links = append(links, n)
			continue
		}
		if ino.hdr.Typeflag == tar.TypeReg {
			files = append(files, n)
			continue
		}
		h := ino.hdr
		h.Name = pathOf(n)
		if ino.hdr.Typeflag == tar.TypeDir {
			h.Name += "/"
		}
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("writing %q: %w", h.Name, err)
		}
	}
	// In spool order, so the spool is read front to back.
	slices.SortFunc(files, func(a, b *node) int { return cmp.Compare(a.ino.off, b.ino.off) })
	buf := make([]byte, 32<<10)
	for _, n := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		h := n.ino.hdr
		h.Name = pathOf(n)
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("writing %q: %w", h.Name, err)
		}
		if _, err := io.CopyBuffer(tw, io.NewSectionReader(t.spool, n.ino.off, h.Size), buf); err != nil {
			return fmt.Errorf("writing %q: %w", h.Name, err)
		}
	}
	for _, l := range links {
		h := l.ino.hdr
		h.Typeflag = tar.TypeLink
		h.Name = pathOf(l)
		h.Linkname = pathOf(l.ino.primary)
		h.Size = 0
		h.Devmajor, h.Devminor = 0, 0
		h.PAXRecords = nil // the xattrs belong to the inode, written once
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("writing %q: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("finishing tar: %w", err)
	}
	return nil
}

package vm

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/image"
	"kiln.dev/kiln/internal/kernel"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vmm"
)

// How an image VM's disks are named: the drive IDs on the monitor's command
// line and the serials kiln-init finds them by.
const (
	imageDriveID = "image"
	diskDriveID  = "disk"
	// SerialImage is the serial of the read-only disk holding the image's
	// root filesystem.
	SerialImage = "kiln-image"
	// SerialDisk is the serial of the VM's own writable disk.
	SerialDisk = "kiln-disk"

	diskFile   = "disk.ext4"
	diskFSType = "ext4"
)

// What binary mode takes out of an image is bounded, since the image may
// come from an attacker: each file is streamed from the image's root
// filesystem to the VM's directory, and from there into its initrd, which
// the guest holds in memory. A larger file is refused, naming the limit.
// Tests lower these.
var (
	// maxBinarySize bounds the program binary mode runs: 1 GiB.
	maxBinarySize int64 = 1 << 30
	// maxUserDBSize bounds each of the image's /etc/passwd and
	// /etc/group, taken along for user names to resolve: 1 MiB.
	maxUserDBSize int64 = 1 << 20
)

// imageStores holds the factory's image store, opened on first use.
type imageStores struct {
	mu    sync.Mutex // guards store
	store *image.Store
}

// WithImages makes the factory use s for images instead of opening the
// store under its root on first use. s must be the store of the same root:
// VMs record the IDs of the images they were made from.
func WithImages(s *image.Store) Option { return func(r *Factory) { r.images.store = s } }

// Images returns the factory's image store, opening it on first use.
func (r *Factory) Images() (*image.Store, error) {
	r.images.mu.Lock()
	defer r.images.mu.Unlock()
	if r.images.store == nil {
		s, err := image.Open(r.root, image.WithLogger(r.log))
		if err != nil {
			return nil, err
		}
		r.images.store = s
	}
	return r.images.store, nil
}

// imagePlan is what Create learnt from an image: how the VM runs it.
type imagePlan struct {
	img    *image.Image
	rootfs image.RootFS
	mode   string
	// args is the command after docker's Entrypoint/Cmd rules.
	args       []string
	workingDir string
	// user is resolved in the guest ("" is root).
	user string
	// binary is what binary mode takes out of the image into the VM's
	// initrd: the ELF first, then the image's user databases when it has
	// them. findBinary picks them; attach copies them.
	binary []imageFile
	// rdsquashfs is the tool that reads them out of the image.
	rdsquashfs string
	// rootDir is the host directory a root directory VM runs; attach
	// packs it into the VM's directory as its rootfs.
	rootDir string
}

// rootDirFile is a root directory VM's root filesystem, packed from the
// directory when the VM is created.
const rootDirFile = "root.sqfs"

// checkRootDir checks that a root directory is a directory the daemon can
// read, naming it when it is not.
func checkRootDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return errdefs.Invalid(fmt.Sprintf("root directory %s: %v", dir, errors.Unwrap(err)))
	}
	if !st.IsDir() {
		return errdefs.Invalid(fmt.Sprintf("root directory %s is not a directory", dir))
	}
	return nil
}

// imageFile is one file binary mode takes out of the image.
type imageFile struct {
	guest string // its path in the image, and in the guest
	real  string // its path in the image with no symbolic link in it
	perm  uint32
	max   int64  // the most bytes it may hold
	host  string // the file attach copies it to, in the VM's directory
}

// resolveImage gets spec's image (pulling it as the pull policy says),
// its root filesystem (built once per image, then cached), and works out
// the command and mode. It fills in spec.ImageID, ExposedPorts and
// StopSignal. It returns nil for a program spec. It creates nothing but
// shared cache entries, so a failure leaves no VM state behind.
func (r *Factory) resolveImage(ctx context.Context, s *Spec) (*imagePlan, error) {
	if s.RootDir != "" {
		// A root directory is an image with an empty config: the
		// request's command, environment, directory and user are all
		// there is. attach packs it.
		return &imagePlan{img: &image.Image{}, mode: options.ModeFull, args: imageArgs(image.Config{}, s),
			workingDir: s.WorkingDir, user: s.User, rootDir: s.RootDir}, nil
	}
	if s.Image == "" {
		return nil, nil
	}
	store, err := r.Images()
	if err != nil {
		return nil, err
	}
	img, err := getImage(ctx, store, s)
	if err != nil {
		return nil, err
	}
	p := &imagePlan{img: img, mode: s.Mode}
	if p.mode == "" {
		p.mode = options.ModeFull
		if m := img.Config.Labels[options.ModeLabel]; m == options.ModeBinary {
			p.mode = options.ModeBinary
		}
	}
	if img.OS != "" && img.OS != "linux" || img.Architecture != "" && img.Architecture != "amd64" {
		return nil, fmt.Errorf("image %s is for %s/%s; kiln runs linux/amd64: %w", s.Image, img.OS, img.Architecture, errdefs.ErrInvalidArgument)
	}
	p.args = imageArgs(img.Config, s)
	p.workingDir = s.WorkingDir
	if p.workingDir == "" {
		p.workingDir = img.Config.WorkingDir
	}
	if p.workingDir != "" && !path.IsAbs(p.workingDir) {
		return nil, fmt.Errorf("image %s has a relative working directory %q: %w", s.Image, p.workingDir, errdefs.ErrInvalidArgument)
	}
	p.user = s.User
	if p.user == "" {
		p.user = img.Config.User
	}
	if s.StopSignal == 0 && img.Config.StopSignal != "" {
		sig, err := options.ParseSignal(img.Config.StopSignal)
		if err != nil {
			return nil, fmt.Errorf("image %s: stop signal: %w", s.Image, err)
		}
		s.StopSignal = sig
	}
	s.ImageID = img.ID
	s.ExposedPorts = img.Config.ExposedPorts
	if h := img.Config.Healthcheck; h != nil {
		s.Healthcheck = mergeHealth(s.Healthcheck, healthFromImage(h))
	}
	if p.rootfs, err = store.RootFS(ctx, img); err != nil {
		return nil, err
	}
	if p.mode == options.ModeBinary {
		if err := p.findBinary(ctx, s); err != nil {
			return nil, err
		}
	}
	if len(p.args) == 0 {
		return nil, fmt.Errorf("image %s has no command (no Entrypoint or Cmd): give one after the image, or --entrypoint: %w", s.Image, errdefs.ErrInvalidArgument)
	}
	return p, nil
}

// getImage returns spec's image from the store, pulling it as the pull
// policy says.
func getImage(ctx context.Context, store *image.Store, s *Spec) (*image.Image, error) {
	opts := image.PullOptions{Insecure: s.Insecure}
	if s.Pull == options.PullAlways {
		return store.Pull(ctx, s.Image, opts)
	}
	img, err := store.Get(s.Image)
	if err == nil || !errors.Is(err, image.ErrNotFound) {
		return img, err
	}
	if s.Pull == options.PullNever {
		return nil, fmt.Errorf("image %s is not in the store, and the pull policy is never (pull it with `kiln pull`): %w", s.Image, image.ErrNotFound)
	}
	if strings.HasPrefix(s.Image, "sha256:") || len(s.Image) == 64 && imageIDRE.MatchString(s.Image) {
		return nil, err // an image ID not in the store: nothing to pull
	}
	return store.Pull(ctx, s.Image, opts)
}

// imageArgs applies docker's rules: an --entrypoint replaces the image's
// Entrypoint and drops its Cmd; arguments given replace the Cmd.
func imageArgs(c image.Config, s *Spec) []string {
	entry, cmd := c.Entrypoint, c.Cmd
	if len(s.Entrypoint) > 0 {
		entry, cmd = s.Entrypoint, nil
	}
	if len(s.Cmd) > 0 {
		cmd = s.Cmd
	}
	return append(append([]string{}, entry...), cmd...)
}

// attach prepares the VM's side of the plan in its directory dir: in full
// mode its writable disk and both drives; in binary mode the files that go
// into the initrd, copied out of the image into dir.
func (p *imagePlan) attach(ctx context.Context, dir string, s *Spec) ([]kernel.File, []vmm.Drive, error) {
	if p.mode == options.ModeBinary {
		files, err := p.extractBinary(ctx, dir, s)
		return files, nil, err
	}
	if p.rootDir != "" {
		// Packed as a baked directory is: owners, modes, times, special
		// files kept; the guest's writes go to the VM's disk above it.
		p.rootfs = image.RootFS{Path: filepath.Join(dir, rootDirFile), FSType: image.FSTypeSquashfs}
		if err := bake(ctx, p.rootDir, p.rootfs.Path); err != nil {
			return nil, nil, err
		}
	}
	diskPath := filepath.Join(dir, diskFile)
	if err := disk.MakeExt4(ctx, diskPath, s.DiskMiB, "kiln-disk"); err != nil {
		return nil, nil, err
	}
	return nil, []vmm.Drive{
		{ID: imageDriveID, Path: p.rootfs.Path, ReadOnly: true, Serial: SerialImage},
		{ID: diskDriveID, Path: diskPath, Serial: SerialDisk},
	}, nil
}

// agentSpec is what kiln-init is told to run for an image: the image's
// config with the spec's overrides, and in full mode where its root is.
func (p *imagePlan) agentSpec(s *Spec, k *kernel.Kernel) *agent.Spec {
	// HOME is left to the guest, which takes it from the image's
	// /etc/passwd for the user, as docker does.
	env := options.MergeEnv([]string{"PATH=" + options.DefaultPath, "HOSTNAME=" + s.Name}, p.img.Config.Env)
	env = options.MergeEnv(env, s.Env)
	as := &agent.Spec{
		Version:    agent.Version,
		Args:       p.args,
		Env:        env,
		WorkingDir: p.workingDir,
		User:       p.user,
		Hostname:   s.Name,
		Rlimits:    s.guestRlimits(),
		Modules:    kernel.GuestModules(k),
		StopSignal: s.StopSignal,
	}
	if p.mode == options.ModeFull {
		as.Root = &agent.RootSpec{
			Lower: agent.Disk{Serial: SerialImage, FSType: p.rootfs.FSType},
			Upper: agent.Disk{Serial: SerialDisk, FSType: diskFSType},
		}
	} else if as.User == "" {
		// Have the guest resolve root too, for HOME from the image's
		// /etc/passwd when it has one.
		as.User = "0"
	}
	return as
}

// findBinary finds the static ELF a binary-mode image is for:
// /usr/local/bin/<repository base name> when the image has it, else the
// command's program (looked up in the image's PATH when it has no slash).
// The file goes into the initrd at the path it had in the image, so the
// command finds it there; the image's /etc/passwd and /etc/group go along,
// for the user to be resolved. It reads only what the image's root
// filesystem says about those files, and refuses one over its size limit
// before anything is copied; extractBinary copies them.
func (p *imagePlan) findBinary(ctx context.Context, s *Spec) error {
	bin, err := disk.FindTool("rdsquashfs", "squashfs-tools-ng")
	if err != nil {
		return err
	}
	p.rdsquashfs = bin
	sq := &squashfs{bin: bin, path: p.rootfs.Path, ctx: ctx}
	var candidates []string
	if base := repoBase(s.Image, p.img); base != "" {
		candidates = append(candidates, "/usr/local/bin/"+base)
	}
	if len(p.args) > 0 {
		prog := p.args[0]
		switch {
		case path.IsAbs(prog):
			candidates = append(candidates, prog)
		case !strings.Contains(prog, "/"):
			env := options.MergeEnv([]string{"PATH=" + options.DefaultPath}, p.img.Config.Env)
			for _, d := range filepath.SplitList(envOf(env, "PATH")) {
				if path.IsAbs(d) {
					candidates = append(candidates, path.Join(d, prog))
				}
			}
		}
	}
	for _, c := range candidates {
		real, st, err := sq.resolve(c)
		if err != nil || st.typ != "file" {
			continue
		}
		if st.size > maxBinarySize {
			return fmt.Errorf("image %s: %s is %d bytes, over the %s limit of binary mode (use --mode full): %w",
				s.Image, c, st.size, disk.SizeName(maxBinarySize), errdefs.ErrInvalidArgument)
		}
		p.binary = append(p.binary, imageFile{guest: c, real: real, perm: st.perm | 0o100, max: maxBinarySize, host: "image-binary"})
		if len(p.args) == 0 {
			p.args = []string{c}
		}
		for _, db := range []string{"/etc/passwd", "/etc/group"} {
			real, st, err := sq.resolve(db)
			if err != nil || st.typ != "file" {
				continue
			}
			if st.size > maxUserDBSize {
				return fmt.Errorf("image %s: %s is %d bytes, over the %s limit of binary mode (use --mode full): %w",
					s.Image, db, st.size, disk.SizeName(maxUserDBSize), errdefs.ErrInvalidArgument)
			}
			p.binary = append(p.binary, imageFile{guest: db, real: real, perm: 0o644, max: maxUserDBSize, host: "image-" + path.Base(db)})
		}
		return nil
	}
	if len(candidates) == 0 {
		return fmt.Errorf("image %s: no binary for binary mode: it has no repository name and no command: %w", s.Image, errdefs.ErrInvalidArgument)
	}
	return fmt.Errorf("image %s: no binary for binary mode: none of %s is a file in the image (use --mode full, or --entrypoint): %w",
		s.Image, strings.Join(candidates, ", "), errdefs.ErrInvalidArgument)
}

// extractBinary copies the files findBinary picked out of the image into
// the VM's directory dir, each streamed to its file and never held in
// memory, and returns them as the initrd's files. The program must be a
// static x86-64 ELF.
func (p *imagePlan) extractBinary(ctx context.Context, dir string, s *Spec) ([]kernel.File, error) {
	sq := &squashfs{bin: p.rdsquashfs, path: p.rootfs.Path, ctx: ctx}
	var files []kernel.File
	for i, f := range p.binary {
		dst := filepath.Join(dir, f.host)
		if err := sq.extract(f.real, dst, f.max); err != nil {
			if errors.Is(err, errOverLimit) {
				return nil, fmt.Errorf("image %s: %s is over the %s limit of binary mode (use --mode full): %w",
					s.Image, f.guest, disk.SizeName(f.max), errdefs.ErrInvalidArgument)
			}
			return nil, err
		}
		if i == 0 {
			if err := checkStaticELFFile(dst, s.Image, f.guest); err != nil {
				return nil, err
			}
		}
		files = append(files, kernel.File{Path: f.guest, Mode: f.perm, Source: dst})
	}
	return files, nil
}

func envOf(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// repoBase is the last path element of the image's repository: from the
// reference the user gave, else from the image's first tag.
func repoBase(ref string, img *image.Image) string {
	refs := []string{ref}
	refs = append(refs, img.RepoTags...)
	for _, r := range refs {
		if imageIDRE.MatchString(r) {
			continue
		}
		if pr, err := name.ParseReference(r); err == nil {
			return path.Base(pr.Context().RepositoryStr())
		}
	}
	return ""
}

// checkStaticELFFile is checkStaticELF on the host file name.
func checkStaticELFFile(name, img, p string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return checkStaticELF(f, img, p)
}

// checkStaticELF reports whether r is an x86-64 Linux executable that
// needs no dynamic loader: in binary mode the VM holds nothing else. It
// reads the ELF header and program headers only (debug/elf would also
// read the section name table, whatever size the file claims for it).
func checkStaticELF(r io.ReaderAt, img, p string) error {
	notELF := fmt.Errorf("image %s: %s is not an ELF executable, which binary mode needs (use --mode full): %w", img, p, errdefs.ErrInvalidArgument)
	var ident [elf.EI_NIDENT]byte
	if _, err := r.ReadAt(ident[:], 0); err != nil || string(ident[:4]) != elf.ELFMAG {
		return notELF
	}
	if class, data := elf.Class(ident[elf.EI_CLASS]), elf.Data(ident[elf.EI_DATA]); class != elf.ELFCLASS64 || data != elf.ELFDATA2LSB {
		return fmt.Errorf("image %s: %s is not an x86-64 executable (%s %s): %w", img, p, class, data, errdefs.ErrInvalidArgument)
	}
	var h elf.Header64
	if err := binary.Read(io.NewSectionReader(r, 0, int64(binary.Size(h))), binary.LittleEndian, &h); err != nil {
		return notELF
	}
	machine, typ := elf.Machine(h.Machine), elf.Type(h.Type)
	if machine != elf.EM_X86_64 || (typ != elf.ET_EXEC && typ != elf.ET_DYN) {
		return fmt.Errorf("image %s: %s is not an x86-64 executable (%s %s): %w", img, p, machine, typ, errdefs.ErrInvalidArgument)
	}
	var prog elf.Prog64
	size := binary.Size(prog)
	if h.Phnum > 0 && int(h.Phentsize) < size {
		return notELF
	}
	for i := range int64(h.Phnum) {
		off := int64(h.Phoff) + i*int64(h.Phentsize)
		if err := binary.Read(io.NewSectionReader(r, off, int64(size)), binary.LittleEndian, &prog); err != nil {
			return notELF
		}
		if elf.ProgType(prog.Type) == elf.PT_INTERP {
			return fmt.Errorf("image %s: %s is dynamically linked, and binary mode has no libraries (use --mode full): %w", img, p, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// squashfs reads single files out of a squashfs image with rdsquashfs,
// without unpacking it.
type squashfs struct {
	ctx  context.Context
	bin  string
	path string
}

// sqStat is what rdsquashfs --stat says about an inode.
type sqStat struct {
	typ  string // "file", "directory", "symbolic link", ...
	perm uint32
	link string
	size int64 // of a file
}

// errOverLimit is what a limitWriter returns once writing more would pass
// its limit.
var errOverLimit = errors.New("over the limit")

// limitWriter passes at most max bytes to w; a write that would pass it
// fails with errOverLimit, and so does every one after.
type limitWriter struct {
	w    io.Writer
	n    int64
	max  int64
	over bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.over || l.n+int64(len(p)) > l.max {
		l.over = true
		return 0, errOverLimit
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

// headBuffer keeps the first max bytes written to it and drops the rest:
// enough of a tool's stderr to explain a failure.
type headBuffer struct {
	bytes.Buffer
	max int
}

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := h.max - h.Len(); room > 0 {
		h.Buffer.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// run runs rdsquashfs with args and returns its output, which must be
// small (a --stat): at most 64 KiB.
func (q *squashfs) run(args ...string) ([]byte, error) {
	var out bytes.Buffer
	if err := q.runTo(&limitWriter{w: &out, max: 64 << 10}, args...); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// runTo runs rdsquashfs with args, its output going to stdout. The tool
// is stopped when stdout refuses what it writes (a broken pipe).
func (q *squashfs) runTo(stdout io.Writer, args ...string) error {
	cmd := exec.CommandContext(q.ctx, q.bin, append(args, q.path)...)
	stderr := &headBuffer{max: 4 << 10}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Run(); err != nil {
		if lw, ok := stdout.(*limitWriter); ok && lw.over {
			return errOverLimit
		}
		return fmt.Errorf("reading %s from %s: %w: %s", args[len(args)-1], q.path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if lw, ok := stdout.(*limitWriter); ok && lw.over {
		return errOverLimit // the tool ended before the refused write reached it
	}
	return nil
}

// extract copies the regular file p of the image (a path with no symbolic
// link in it) to dst, a new host file, as rdsquashfs streams it out: the
// file is never held in memory. A file over max bytes is refused with
// errOverLimit as soon as the stream passes max, and dst is removed.
func (q *squashfs) extract(p, dst string, max int64) (err error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("extracting %s from the image: %w", p, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("extracting %s from the image: %w", p, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	return q.runTo(&limitWriter{w: f, max: max}, "--cat", p)
}

func (q *squashfs) stat(p string) (sqStat, error) {
	out, err := q.run("--stat", p)
	if err != nil {
		return sqStat{}, err
	}
	var st sqStat
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		switch k {
		case "Inode type":
			st.typ = v
		case "Access":
			if n, err := strconv.ParseUint(v, 8, 32); err == nil {
				st.perm = uint32(n) & 0o777
			}
		case "Link target":
			st.link = v
		case "File size":
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				st.size = n
			}
		}
	}
	return st, nil
}

// resolve follows symbolic links in p inside the image, as the guest would,
// and returns the path without links and what it is.
func (q *squashfs) resolve(p string) (string, sqStat, error) {
	// Most paths hold no link: one look-up.
	if st, err := q.stat(p); err == nil && st.typ != "symbolic link" {
		return p, st, nil
	}
	comps := splitPath(p)
	cur := "/"
	for hops, i := 0, 0; i < len(comps); i++ {
		next := path.Join(cur, comps[i])
		st, err := q.stat(next)
		if err != nil {
			return "", sqStat{}, err
		}
		if st.typ != "symbolic link" {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", sqStat{}, fmt.Errorf("resolving %s in the image: too many levels of symbolic links", p)
		}
		base := cur
		if path.IsAbs(st.link) {
			base = "/"
		}
		comps = append(splitPath(path.Join(base, st.link)), comps[i+1:]...)
		cur, i = "/", -1
	}
	st, err := q.stat(cur)
	return cur, st, err
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(path.Clean("/"+p), "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

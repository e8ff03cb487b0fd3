package main

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
)

// imageCommands are the commands that manage images: the docker-style
// top-level ones (pull, images, rmi, load, push, login, logout) and the
// `image` group. The daemon owns the image store; these are its clients.
func imageCommands(g *globals) []*cobra.Command {
	group := &cobra.Command{Use: "image", Short: "Manage images"}
	ls := newImagesCmd(g)
	ls.Use, ls.Aliases = "ls [flags]", []string{"list"}
	rm := newRmiCmd(g)
	rm.Use = "rm [-f] IMAGE..."
	group.AddCommand(ls, rm, newPullCmd(g), newPushCmd(g), newLoadCmd(g), newImagePruneCmd(g), newImageInspectCmd(g), newTagCmd(g))
	return []*cobra.Command{
		newPullCmd(g), newImagesCmd(g), newRmiCmd(g), newLoadCmd(g), newPushCmd(g), newTagCmd(g),
		newLoginCmd(g), newLogoutCmd(g), group,
	}
}

// newTagCmd is docker tag: another name for a stored image.
func newTagCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "tag IMAGE TAG",
		Short: "Give a stored image another tag (a tag that named another image moves)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			_, err = cl.TagImage(ctx, args[0], args[1])
			return err
		},
	}
}

// defaultPlatform is the platform pulled from multi-platform images:
// kiln's guests are x86-64 Linux.
const defaultPlatform = "linux/amd64"

func newPullCmd(g *globals) *cobra.Command {
	var o client.PullOptions
	c := &cobra.Command{
		Use:   "pull [flags] IMAGE",
		Short: "Pull an image from a registry",
		Long: `Pull an image (by tag or digest) into kiln's store, with its layers checked
against their digests. Plain HTTP is used only for registries on loopback
unless --insecure is given. Progress goes to stderr; the image ID to stdout.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := connect(cmd.Context(), g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			p := newPullProgress(cmd.ErrOrStderr())
			o.Progress = p.message
			img, err := cl.PullImage(cmd.Context(), args[0], o)
			p.finish()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "pulled %s: digest %s\n", args[0], img.Digest)
			fmt.Fprintln(cmd.OutOrStdout(), img.ID)
			return nil
		},
	}
	c.Flags().BoolVar(&o.Insecure, "insecure", false, "allow plain HTTP to a registry that is not on loopback")
	c.Flags().StringVar(&o.Platform, "platform", defaultPlatform, "platform to pull from a multi-platform image")
	return c
}

func newPushCmd(g *globals) *cobra.Command {
	var o client.PushOptions
	c := &cobra.Command{
		Use:   "push [flags] IMAGE DESTINATION",
		Short: "Push an image from the store to a registry",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := connect(cmd.Context(), g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			p := newPullProgress(cmd.ErrOrStderr())
			o.Progress = p.message
			err = cl.PushImage(cmd.Context(), args[0], args[1], o)
			p.finish()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pushed %s to %s\n", args[0], args[1])
			return nil
		},
	}
	c.Flags().BoolVar(&o.Insecure, "insecure", false, "allow plain HTTP to a registry that is not on loopback")
	return c
}

func newLoadCmd(g *globals) *cobra.Command {
	var input string
	c := &cobra.Command{
		Use:   "load [-i FILE | oci:DIR]",
		Short: "Load images from a docker or OCI archive, or an OCI layout directory",
		Long: `Load every image of a docker-archive tarball ("docker save" output) or an OCI
archive given with -i, or of an OCI image layout directory given as oci:DIR.
An archive may be compressed with gzip, zstd or bzip2 ("docker save | gzip"),
whatever its name says.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src := input
			switch {
			case len(args) == 1 && input != "":
				return errdefs.Invalid("give -i FILE or a source argument, not both")
			case len(args) == 1:
				src = args[0]
			case input == "":
				return errdefs.Invalid("nothing to load: give -i FILE, or oci:DIR")
			}
			cl, err := connect(cmd.Context(), g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			imgs, err := loadImages(cmd.Context(), cl, src)
			if err != nil {
				return err
			}
			for _, img := range imgs {
				if len(img.RepoTags) == 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "Loaded image ID: %s\n", img.ID)
				}
				for _, t := range img.RepoTags {
					fmt.Fprintf(cmd.OutOrStdout(), "Loaded image: %s\n", displayTag(t))
				}
			}
			return nil
		},
	}
	c.Flags().StringVarP(&input, "input", "i", "", "archive to load (docker-archive or OCI archive)")
	return c
}

// loadImages sends src to the daemon as an archive: a file as it is, an
// OCI layout directory (oci:DIR, or a directory with an oci-layout file)
// packed as an OCI archive. The daemon opens no path of the user's: this
// process reads src with the user's own access.
func loadImages(ctx context.Context, cl *client.Client, src string) ([]api.Image, error) {
	dir, isLayout := strings.CutPrefix(src, "oci:")
	if !isLayout {
		fi, err := os.Stat(src)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("loading %s: %w: %w", src, errdefs.ErrNotFound, err)
		}
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", src, err)
		}
		if fi.IsDir() {
			if _, err := os.Stat(filepath.Join(src, "oci-layout")); err != nil {
				return nil, fmt.Errorf("loading %s: directory without an oci-layout file: %w", src, errdefs.ErrInvalidArgument)
			}
			dir, isLayout = src, true
		}
	}
	if !isLayout {
		f, err := os.Open(src)
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", src, err)
		}
		defer f.Close()
		return cl.LoadImages(ctx, f, src)
	}
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err != nil {
		return nil, fmt.Errorf("loading %s: not an OCI image layout: %w: %w", src, errdefs.ErrInvalidArgument, err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarLayout(pw, dir)) }()
	defer pr.Close() // ends tarLayout if the daemon stops reading
	return cl.LoadImages(ctx, pr, src)
}

// layoutFile matches the files of an OCI image layout that loading reads.
var layoutFile = regexp.MustCompile(`^(oci-layout|index\.json|blobs/sha256/[0-9a-f]{64})$`)

// tarLayout writes the OCI image layout in dir to w as an OCI archive:
// its oci-layout, index.json and blobs, as regular files.
func tarLayout(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() || !layoutFile.MatchString(rel) {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		if err := tw.WriteHeader(&tar.Header{Name: rel, Mode: 0o644, Size: fi.Size(), Typeflag: tar.TypeReg, ModTime: fi.ModTime()}); err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return fmt.Errorf("reading layout %s: %w", dir, err)
	}
	return tw.Close()
}

func newLoginCmd(g *globals) *cobra.Command {
	var user, password string
	var stdin bool
	c := &cobra.Command{
		Use:   "login [flags] REGISTRY",
		Short: "Store credentials for a registry",
		Long: `Store credentials for a registry in <root>/auth.json (mode 0600, docker's
config.json format). They are checked on the next pull or push.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if user == "" {
				return errdefs.Invalid("give the user name with -u")
			}
			switch {
			case stdin && password != "":
				return errdefs.Invalid("--password and --password-stdin are mutually exclusive")
			case stdin:
				b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 64<<10))
				if err != nil {
					return fmt.Errorf("reading password: %w", err)
				}
				password = strings.TrimRight(string(b), "\r\n")
			case password != "":
				fmt.Fprintln(cmd.ErrOrStderr(), "kiln: warning: a password on the command line is visible to other users; use --password-stdin")
			default:
				return errdefs.Invalid("give the password with --password-stdin")
			}
			cl, err := connect(cmd.Context(), g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := cl.Login(cmd.Context(), args[0], user, password); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "credentials stored for %s\n", args[0])
			return nil
		},
	}
	c.Flags().StringVarP(&user, "username", "u", "", "user name")
	c.Flags().StringVarP(&password, "password", "p", "", "password (prefer --password-stdin)")
	c.Flags().BoolVar(&stdin, "password-stdin", false, "read the password from stdin")
	return c
}

func newLogoutCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "logout REGISTRY",
		Short: "Forget the credentials for a registry",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := connect(cmd.Context(), g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return cl.Logout(cmd.Context(), args[0])
		},
	}
}

func newImagesCmd(g *globals) *cobra.Command {
	var format string
	var quiet bool
	c := &cobra.Command{
		Use:   "images [flags]",
		Short: "List images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "" && format != "table" && format != "json" {
				return errdefs.Invalid(fmt.Sprintf("invalid format %q: use table or json", format))
			}
			cl, err := connect(cmd.Context(), g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			imgs, err := cl.Images(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch {
			case quiet:
				for _, img := range imgs {
					fmt.Fprintln(out, shortImageID(img.ID))
				}
			case format == "json":
				enc := json.NewEncoder(out)
				for _, img := range imgs {
					if err := enc.Encode(img); err != nil {
						return err
					}
				}
			default:
				writeImageTable(out, imgs, time.Now())
			}
			return nil
		},
	}
	c.Flags().StringVar(&format, "format", "", "output format: table (default) or json (one object per line)")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print image IDs only")
	return c
}

// writeImageTable writes one row per tag (an untagged image gets one row
// with <none>), newest image first.
func writeImageTable(w io.Writer, imgs []api.Image, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "REPOSITORY\tTAG\tDIGEST\tSIZE\tCREATED")
	for _, img := range imgs {
		tags := img.RepoTags
		if len(tags) == 0 {
			tags = []string{""}
		}
		for _, t := range tags {
			repo, tag := "<none>", "<none>"
			if t != "" {
				repo, tag = splitTag(t)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", repo, tag, shortDigest(img.Digest), imageSize(img.Size), imageAge(img.Created, now))
		}
	}
	tw.Flush()
}

// splitTag splits a stored (fully qualified) tag into the repository as
// users write it and the tag.
func splitTag(t string) (repo, tag string) {
	nt, err := name.NewTag(t)
	if err != nil {
		i := strings.LastIndex(t, ":")
		if i < 0 {
			return t, "<none>"
		}
		return t[:i], t[i+1:]
	}
	return displayRepo(nt.Context()), nt.TagStr()
}

// displayTag is a stored tag as users write it.
func displayTag(t string) string {
	repo, tag := splitTag(t)
	return repo + ":" + tag
}

// displayRepo shortens a repository on the default registry the way users
// write it ("app" for the default registry's "library/app").
func displayRepo(r name.Repository) string {
	if r.RegistryStr() != name.DefaultRegistry {
		return r.Name()
	}
	return strings.TrimPrefix(r.RepositoryStr(), "library/")
}

func shortImageID(id string) string {
	h := strings.TrimPrefix(id, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}

func shortDigest(d string) string {
	algo, h, ok := strings.Cut(d, ":")
	if !ok {
		return d
	}
	if len(h) > 12 {
		h = h[:12]
	}
	return algo + ":" + h
}

// imageSize formats bytes as docker does (decimal units).
func imageSize(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	f := float64(n)
	for _, u := range []string{"kB", "MB", "GB", "TB"} {
		f /= unit
		if f < unit {
			return fmt.Sprintf("%.3g%s", f, u)
		}
	}
	return fmt.Sprintf("%.3gPB", f/unit)
}

// imageAge says how long before now t was, coarsely.
func imageAge(t, now time.Time) string {
	if t.IsZero() || t.Unix() <= 0 {
		return "N/A"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "in the future"
	case d < time.Minute:
		return "less than a minute ago"
	case d < time.Hour:
		return agoUnits(int(d/time.Minute), "minute")
	case d < 48*time.Hour:
		return agoUnits(int(d/time.Hour), "hour")
	case d < 14*24*time.Hour:
		return agoUnits(int(d/(24*time.Hour)), "day")
	case d < 60*24*time.Hour:
		return agoUnits(int(d/(7*24*time.Hour)), "week")
	case d < 2*365*24*time.Hour:
		return agoUnits(int(d/(30*24*time.Hour)), "month")
	}
	return agoUnits(int(d/(365*24*time.Hour)), "year")
}

func agoUnits(n int, unit string) string {
	if n == 1 {
		return "1 " + unit + " ago"
	}
	return fmt.Sprintf("%d %ss ago", n, unit)
}

func newRmiCmd(g *globals) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "rmi [-f] IMAGE...",
		Short: "Remove images",
		Long: `Remove images by tag, ID or digest. Removing a tag removes the image once no
tag is left. An image a VM was made from (running or not) is not removed
unless -f is given. Blobs and root filesystems are freed by 'kiln image prune'.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := connect(cmd.Context(), g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var failed []string
			for _, ref := range args {
				if err := removeImage(cmd.Context(), cmd.OutOrStdout(), cl, ref, force); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "kiln: %v\n", err)
					failed = append(failed, ref)
				}
			}
			if len(failed) > 0 {
				return &exitCode{exitKilnError}
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "remove the image even when VMs use it")
	return c
}

// removeImage asks the daemon to remove one reference, by its policy (a
// tag of an image that keeps another is untagged; an image VMs use is
// refused unless force), and says what went.
func removeImage(ctx context.Context, out io.Writer, cl *client.Client, ref string, force bool) error {
	items, err := cl.RemoveImages(ctx, ref, force)
	if err != nil {
		return err
	}
	deleted := false
	for _, it := range items {
		deleted = deleted || it.Deleted != ""
	}
	if !deleted {
		fmt.Fprintf(out, "Untagged: %s\n", ref)
		return nil
	}
	for _, it := range items {
		if it.Untagged != "" {
			fmt.Fprintf(out, "Untagged: %s\n", displayTag(it.Untagged))
		}
	}
	for _, it := range items {
		if it.Deleted != "" {
			fmt.Fprintf(out, "Deleted: %s\n", it.Deleted)
		}
	}
	return nil
}

func newImagePruneCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "prune",
		Short: "Delete blobs and root filesystems no image references",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := connect(cmd.Context(), g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			freed, err := cl.PruneImages(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Total reclaimed space: %s\n", imageSize(freed))
			return nil
		},
	}
}

func newImageInspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect IMAGE...",
		Short: "Show images as JSON: ID, tags, digests, config (entrypoint, env, exposed ports, ...)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := connect(cmd.Context(), g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var out []api.Image
			for _, ref := range args {
				img, err := cl.InspectImage(cmd.Context(), ref)
				if err != nil {
					return err
				}
				out = append(out, img)
			}
			b, err := json.MarshalIndent(out, "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			return nil
		},
	}
}

// pullForRun pulls image through the daemon, with progress on stderr,
// when the pull policy asks for a pull, so that `kiln run` shows the
// transfer before the VM is created; it reports whether it pulled, after
// which the caller creates the VM with the policy "missing" so the image
// just pulled is used as is. A reference the store cannot resolve for
// another reason than its absence (or an image ID, which cannot be
// pulled) is left to the VM's creation to report.
func pullForRun(ctx context.Context, g *globals, image, policy string, insecure bool, stderr io.Writer) (pulled bool, err error) {
	if image == "" || policy == options.PullNever {
		return false, nil
	}
	cl, err := connect(ctx, g, stderr)
	if err != nil {
		return false, err
	}
	if policy != options.PullAlways {
		if _, err := cl.InspectImage(ctx, image); err == nil {
			return false, nil
		} else if !errors.Is(err, client.ErrNotFound) || strings.HasPrefix(image, "sha256:") {
			return false, nil // the VM's creation says what is wrong
		}
	}
	p := newPullProgress(stderr)
	_, err = cl.PullImage(ctx, image, client.PullOptions{Insecure: insecure, Progress: p.message})
	p.finish()
	if err != nil {
		return false, err
	}
	return true, nil
}

// transfer is the state of one blob's transfer (or a push's total).
type transfer struct {
	complete, total int64
	// cached: the blob was already stored and nothing was transferred.
	cached bool
}

// pullProgress shows transfer progress: on a terminal, a line per blob redrawn
// in place; otherwise one line per blob when it is complete.
type pullProgress struct {
	w   io.Writer
	tty bool

	mu    sync.Mutex // guards the fields below
	order []string
	blobs map[string]transfer
	done  map[string]bool
	drawn int // lines on screen from the last redraw
	last  time.Time
}

func newPullProgress(w io.Writer) *pullProgress {
	return &pullProgress{w: w, tty: isTTY(w), blobs: map[string]transfer{}, done: map[string]bool{}}
}

// isTTY reports whether w is a terminal.
func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// message takes one progress message of the daemon's stream; messages
// without progress are not shown.
func (p *pullProgress) message(m api.JSONMessage) {
	if m.ProgressDetail == nil {
		return
	}
	key := m.ID
	if key == "" {
		key = "total"
	}
	p.report(key, transfer{complete: m.ProgressDetail.Current, total: m.ProgressDetail.Total, cached: m.Status == api.StatusAlreadyExists})
}

// report takes one progress report for the blob key.
func (p *pullProgress) report(key string, r transfer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.blobs[key]; !ok {
		p.order = append(p.order, key)
	}
	p.blobs[key] = r
	complete := r.cached || (r.total > 0 && r.complete >= r.total)
	if !p.tty {
		if complete && !p.done[key] {
			p.done[key] = true
			fmt.Fprintln(p.w, progressLine(key, r))
		}
		return
	}
	if complete || time.Since(p.last) > 100*time.Millisecond {
		p.redraw()
	}
}

// redraw draws every blob's line, over the previous drawing.
//
// Preconditions: p.mu is held.
func (p *pullProgress) redraw() {
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", p.drawn)
	}
	for _, k := range p.order {
		fmt.Fprintf(&b, "\x1b[2K%s\n", progressLine(k, p.blobs[k]))
	}
	p.drawn = len(p.order)
	p.last = time.Now()
	io.WriteString(p.w, b.String())
}

// finish draws the final state on a terminal. It is safe on a nil
// progress.
func (p *pullProgress) finish() {
	if p == nil || !p.tty {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.order) > 0 {
		p.redraw()
	}
}

func progressLine(key string, r transfer) string {
	label := key
	if key != "total" {
		label = shortDigest(key)
	}
	switch {
	case r.cached:
		return fmt.Sprintf("%s: already present (%s)", label, imageSize(r.total))
	case r.total > 0 && r.complete >= r.total:
		return fmt.Sprintf("%s: done (%s)", label, imageSize(r.total))
	case r.total > 0:
		const width = 30
		n := int(float64(width) * float64(r.complete) / float64(r.total))
		return fmt.Sprintf("%s: [%s>%s] %s/%s", label, strings.Repeat("=", n), strings.Repeat(" ", width-n), imageSize(r.complete), imageSize(r.total))
	}
	return fmt.Sprintf("%s: %s", label, imageSize(r.complete))
}

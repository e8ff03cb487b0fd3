package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// DefaultPlatform is the platform pulled from multi-platform images when
// PullOptions.Platform is empty: kiln's guests are x86-64 Linux.
const DefaultPlatform = "linux/amd64"

// PullOptions tunes Pull and Push. The zero value pulls linux/amd64 over
// HTTPS (plain HTTP only to loopback registries, as docker allows).
type PullOptions struct {
	// Insecure allows plain HTTP (and so no TLS verification) to any
	// registry, like docker's insecure-registries.
	Insecure bool
	// Platform is "os/arch[/variant]"; empty means DefaultPlatform.
	Platform string
	// Progress, if not nil, gets this call's progress reports instead of
	// the Store's (WithProgress): a daemon serving many clients reports
	// each transfer to the client that asked for it. Calls are serialised
	// as WithProgress says.
	Progress func(Progress) `json:"-"`
}

// Validate checks the options.
func (o PullOptions) Validate() error {
	_, err := o.platform()
	return err
}

func (o PullOptions) platform() (v1.Platform, error) {
	p := o.Platform
	if p == "" {
		p = DefaultPlatform
	}
	pl, err := v1.ParsePlatform(p)
	if err != nil || pl.OS == "" || pl.Architecture == "" {
		return v1.Platform{}, fmt.Errorf("parsing platform %q: %w", p, ErrInvalidArgument)
	}
	return *pl, nil
}

// pullJobs is how many layers download at once, as docker does by default.
const pullJobs = 3

// parseRef parses an image reference; a bare name means ":latest".
func parseRef(ref string, insecure bool) (name.Reference, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("parsing reference %q: %w: %w", ref, ErrInvalidArgument, err)
	}
	return r, nil
}

// remoteOptions are the go-containerregistry options for one transfer.
func (s *Store) remoteOptions(ctx context.Context, insecure bool) []remote.Option {
	base := remote.DefaultTransport.(*http.Transport).Clone()
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(s.keychain()),
		remote.WithTransport(&schemeGuard{insecure: insecure, next: base}),
		remote.WithUserAgent("kiln"),
		remote.WithJobs(pullJobs),
	}
}

// schemeGuard refuses plain-HTTP requests to registries that are not on
// loopback unless the caller asked for Insecure. go-containerregistry on
// its own also falls back to HTTP for private (RFC 1918) addresses, which
// lets anyone on the LAN who can break TLS serve us any image; docker only
// allows that for loopback, and so do we.
type schemeGuard struct {
	insecure bool
	next     http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (g *schemeGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.insecure && !isLoopback(req.URL.Hostname()) {
		return nil, fmt.Errorf("refusing plain HTTP to %s (only loopback registries may use HTTP unless insecure is set): %w",
			req.URL.Host, ErrInvalidArgument)
	}
	return g.next.RoundTrip(req)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// classifyRemote maps a registry error onto this package's sentinels.
func classifyRemote(err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %w", ErrUnauthorized, err)
		case http.StatusNotFound:
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		for _, d := range terr.Errors {
			switch d.Code {
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("%w: %w", ErrUnauthorized, err)
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return fmt.Errorf("%w: %w", ErrNotFound, err)
			}
		}
	}
	return err
}

// Pull fetches ref (a tag or digest reference) from its registry into the
// store and returns it. A multi-platform index resolves to opts.Platform.
// Blobs already stored are not fetched again; every fetched blob is checked
// against its digest before it is stored. Two concurrent Pulls of the same
// image are safe: both end with the same complete image.
func (s *Store) Pull(ctx context.Context, ref string, opts PullOptions) (*Image, error) {
	img, err := s.pull(ctx, ref, opts)
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, err)
	}
	return img, nil
}

func (s *Store) pull(ctx context.Context, ref string, opts PullOptions) (*Image, error) {
	plat, err := opts.platform()
	if err != nil {
		return nil, err
	}
	r, err := parseRef(ref, opts.Insecure)
	if err != nil {
		return nil, err
	}
	ropts := s.remoteOptions(ctx, opts.Insecure)
	// One puller for the manifest and all blobs, so they share the
	// registry ping and token.
	puller, err := remote.NewPuller(ropts...)
	if err != nil {
		return nil, err
	}
	ropts = append(ropts, remote.Reuse(puller))
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return nil, fmt.Errorf("fetching manifest: %w", classifyRemote(err))
	}
	src := source{
		ref:         ref,
		progress:    opts.Progress,
		repoDigests: []string{r.Context().Digest(desc.Digest.String()).Name()},
		platform:    plat,
		// Fetch blobs by digest alone: go-containerregistry then takes
		// the size from Content-Length instead of failing early with an
		// untyped error when it differs from the manifest, and putBlob
		// reports the mismatch as ErrCorrupt.
		fetch: func(d v1.Hash) (io.ReadCloser, error) {
			l, err := remote.Layer(r.Context().Digest(d.String()), ropts...)
			if err != nil {
				return nil, err
			}
			return l.Compressed()
		},
	}
	if tag, ok := r.(name.Tag); ok {
		src.tags = []string{tag.Name()}
	}
	var img v1.Image
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, fmt.Errorf("reading index: %w", classifyRemote(err))
		}
		img, err = imageForPlatform(idx, plat, 0)
		if err != nil {
			return nil, err
		}
	case desc.MediaType.IsSchema1():
		return nil, fmt.Errorf("manifest media type %s (schema 1, deprecated): %w", desc.MediaType, ErrUnsupported)
	case desc.MediaType.IsImage():
		img, err = desc.Image()
		if err != nil {
			return nil, fmt.Errorf("reading image: %w", classifyRemote(err))
		}
	default:
		return nil, fmt.Errorf("manifest media type %q: %w", desc.MediaType, ErrUnsupported)
	}
	s.log.Debug("pulling image", "ref", ref, "digest", desc.Digest.String())
	unlock, err := s.lockGC(unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.ingest(ctx, img, src)
}

// indexLike is what both remote and on-disk (OCI layout) indexes offer.
type indexLike interface {
	IndexManifest() (*v1.IndexManifest, error)
	Image(v1.Hash) (v1.Image, error)
	ImageIndex(v1.Hash) (v1.ImageIndex, error)
}

// imageForPlatform picks the image for want from an index, descending into
// nested indexes. Children without a platform are taken as linux/amd64, as
// go-containerregistry and docker do; attestation manifests
// ("unknown/unknown") never match.
func imageForPlatform(idx indexLike, want v1.Platform, depth int) (v1.Image, error) {
	if depth > 4 {
		return nil, fmt.Errorf("index nesting deeper than 4: %w", ErrUnsupported)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading index: %w", classifyRemote(err))
	}
	var have []string
	for _, d := range im.Manifests {
		p := v1.Platform{OS: "linux", Architecture: "amd64"}
		if d.Platform != nil {
			p = *d.Platform
		}
		have = append(have, p.String())
		if !platformMatches(p, want) {
			continue
		}
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("reading index %s: %w", d.Digest, classifyRemote(err))
			}
			return imageForPlatform(child, want, depth+1)
		case d.MediaType.IsImage() && !d.MediaType.IsSchema1():
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("reading image %s: %w", d.Digest, classifyRemote(err))
			}
			return img, nil
		}
	}
	sort.Strings(have)
	return nil, fmt.Errorf("no image for platform %s in index (has %s): %w", want.String(), strings.Join(have, ", "), ErrNotFound)
}

// platformMatches is true if have satisfies want: OS and architecture
// equal, and the variant equal when want names one.
func platformMatches(have, want v1.Platform) bool {
	return have.OS == want.OS && have.Architecture == want.Architecture &&
		(want.Variant == "" || have.Variant == want.Variant)
}

// source says where an image being ingested came from.
type source struct {
	ref         string         // for progress and messages
	progress    func(Progress) // this call's reports; nil: the Store's
	tags        []string       // canonical tags to point at the image
	repoDigests []string
	platform    v1.Platform
	// fetch, if set, opens a blob; otherwise the image's own layers are
	// read.
	fetch func(v1.Hash) (io.ReadCloser, error)
}

// supportedLayer reports whether a layer media type is one this store can
// flatten. Foreign and non-distributable layers are refused: their content
// lives elsewhere (by design, often a licence boundary), and a rootfs built
// without them would silently lack files.
func supportedLayer(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.DockerUncompressedLayer,
		types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer:
		return true
	}
	return false
}

// ingest copies img into the store and records it. It checks everything it
// can before transferring a byte (manifest and layer media types, config,
// platform), so an unsupported image leaves nothing behind. Blobs land
// before the index entry that references them; the caller's shared GC lock
// keeps Prune from collecting them in between.
//
// Preconditions: the caller holds the GC lock shared (see lockGC).
func (s *Store) ingest(ctx context.Context, img v1.Image, src source) (*Image, error) {
	mt, err := img.MediaType()
	if err != nil {
		return nil, fmt.Errorf("reading manifest media type: %w", classifyRemote(err))
	}
	if !mt.IsImage() || mt.IsSchema1() {
		return nil, fmt.Errorf("manifest media type %q: %w", mt, ErrUnsupported)
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("reading manifest: %w", classifyRemote(err))
	}
	manifestDigest, _, err := v1.SHA256(bytes.NewReader(rawManifest))
	if err != nil {
		return nil, fmt.Errorf("hashing manifest: %w", err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("parsing manifest: %w: %w", ErrCorrupt, err)
	}
	if err := checkDigest(m.Config.Digest); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	for i, l := range m.Layers {
		if !supportedLayer(l.MediaType) {
			return nil, fmt.Errorf("layer %d (%s): media type %q: %w", i, l.Digest, l.MediaType, ErrUnsupported)
		}
		if err := checkDigest(l.Digest); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if l.Size < 0 {
			return nil, fmt.Errorf("layer %d (%s): negative size: %w", i, l.Digest, ErrCorrupt)
		}
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("fetching config: %w", classifyRemote(err))
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, fmt.Errorf("parsing config %s: %w: %w", m.Config.Digest, ErrCorrupt, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("config lists %d layers, manifest %d: %w", len(cfg.RootFS.DiffIDs), len(m.Layers), ErrCorrupt)
	}
	if cfg.OS != "" && cfg.Architecture != "" && !platformMatches(v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}, src.platform) {
		return nil, fmt.Errorf("image is for %s/%s, want %s: %w", cfg.OS, cfg.Architecture, src.platform.String(), ErrUnsupported)
	}

	if err := s.putBlobBytes(ctx, m.Config.Digest, rawConfig); err != nil {
		return nil, fmt.Errorf("storing config: %w", err)
	}
	if err := s.fetchLayers(ctx, img, m.Layers, src); err != nil {
		return nil, err
	}
	// The manifest goes last: a stored manifest implies its blobs are too.
	if err := s.putBlobBytes(ctx, manifestDigest, rawManifest); err != nil {
		return nil, fmt.Errorf("storing manifest: %w", err)
	}

	rec := &record{
		ID:          m.Config.Digest.String(),
		Manifest:    manifestDigest.String(),
		MediaType:   string(mt),
		ConfigSize:  int64(len(rawConfig)),
		ManifestLen: int64(len(rawManifest)),
		Created:     cfg.Created.Time.UTC(),
		Added:       time.Now().UTC(),
		OS:          cfg.OS,
		Arch:        cfg.Architecture,
		Config:      configOf(cfg),
	}
	for i, l := range m.Layers {
		rec.Layers = append(rec.Layers, layerRecord{
			Digest:    l.Digest.String(),
			DiffID:    cfg.RootFS.DiffIDs[i].String(),
			MediaType: string(l.MediaType),
			Size:      l.Size,
		})
	}
	var out *Image
	err = s.updateIndex(func(idx *index) error {
		if old, ok := idx.Images[rec.ID]; ok {
			rec.RepoDigests = old.RepoDigests
		}
		for _, rd := range src.repoDigests {
			if !slices.Contains(rec.RepoDigests, rd) {
				rec.RepoDigests = append(rec.RepoDigests, rd)
			}
		}
		sort.Strings(rec.RepoDigests)
		idx.Images[rec.ID] = rec
		for _, t := range src.tags {
			idx.Tags[t] = rec.ID
		}
		out = idx.toImage(rec)
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("stored image", "ref", src.ref, "id", rec.ID, "digest", rec.Manifest)
	return out, nil
}

// fetchLayers stores every layer not already present, pullJobs at a time.
// On failure the first error is returned and the rest are cancelled;
// layers already complete stay (they are valid, and Prune collects them if
// nothing ever references them).
func (s *Store) fetchLayers(ctx context.Context, img v1.Image, layers []v1.Descriptor, src source) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	sem := make(chan struct{}, pullJobs)
	for i, l := range layers {
		if s.hasBlob(l.Digest, l.Size) {
			s.report(src.progress, Progress{Ref: src.ref, Digest: l.Digest.String(), Complete: l.Size, Total: l.Size, Cached: true})
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			if err := s.fetchLayer(ctx, img, l, src); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("fetching layer %d (%s): %w", i, l.Digest, err)
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return firstErr
}

func (s *Store) fetchLayer(ctx context.Context, img v1.Image, l v1.Descriptor, src source) error {
	var rc io.ReadCloser
	if src.fetch != nil {
		var err error
		if rc, err = src.fetch(l.Digest); err != nil {
			return classifyRemote(err)
		}
	} else {
		layer, err := img.LayerByDigest(l.Digest)
		if err != nil {
			return classifyRemote(err)
		}
		if rc, err = layer.Compressed(); err != nil {
			return classifyRemote(err)
		}
	}
	defer rc.Close()
	// Report at most every 1 MiB so a fast local copy does not drown the
	// callback.
	var last int64
	onWrite := func(n int64) {
		if n-last >= 1<<20 || n == l.Size {
			last = n
			s.report(src.progress, Progress{Ref: src.ref, Digest: l.Digest.String(), Complete: n, Total: l.Size})
		}
	}
	return classifyRemote(s.putBlob(ctx, l.Digest, l.Size, rc, onWrite))
}

// report passes p to fn, or to the Store's progress function when fn is
// nil, one call at a time.
func (s *Store) report(fn func(Progress), p Progress) {
	if fn == nil {
		fn = s.progress
	}
	if fn == nil {
		return
	}
	s.progressMu.Lock()
	defer s.progressMu.Unlock()
	fn(p)
}

// configOf extracts the runtime config kiln uses.
func configOf(cf *v1.ConfigFile) Config {
	c := cf.Config
	out := Config{
		Entrypoint: c.Entrypoint,
		Cmd:        c.Cmd,
		Env:        c.Env,
		WorkingDir: c.WorkingDir,
		User:       c.User,
		StopSignal: c.StopSignal,
		Labels:     c.Labels,
	}
	if h := c.Healthcheck; h != nil {
		out.Healthcheck = &Healthcheck{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod, Retries: h.Retries}
	}
	for p := range c.ExposedPorts {
		out.ExposedPorts = append(out.ExposedPorts, p)
	}
	sort.Strings(out.ExposedPorts)
	for v := range c.Volumes {
		out.Volumes = append(out.Volumes, v)
	}
	sort.Strings(out.Volumes)
	return out
}

package benchkit

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// WriteBusyboxImage writes, as an OCI layout at dir named ref (for `kiln
// load oci:DIR`), an image of one layer: the host's static busybox at
// /bin/busybox with applets linked to it, and files (path → content).
func WriteBusyboxImage(dir, ref string, applets []string, files map[string]string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("%w: run scripts/setup (apt-get install busybox-static)", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	type entry struct {
		h    tar.Header
		body []byte
	}
	entries := []entry{
		{h: tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755}},
		{h: tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, body: bb},
		{h: tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}},
	}
	for _, a := range applets {
		entries = append(entries, entry{h: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}})
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	dirs := map[string]bool{"bin/": true, "tmp/": true}
	for _, p := range paths {
		for i := range p {
			if p[i] == '/' && !dirs[p[:i+1]] {
				dirs[p[:i+1]] = true
				entries = append(entries, entry{h: tar.Header{Typeflag: tar.TypeDir, Name: p[:i+1], Mode: 0o755}})
			}
		}
		entries = append(entries, entry{h: tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: 0o644}, body: []byte(files[p])})
	}
	for _, e := range entries {
		h := e.h
		h.ModTime, h.Format, h.Size = mtime, tar.FormatPAX, int64(len(e.body))
		if err := tw.WriteHeader(&h); err != nil {
			return err
		}
		if _, err := tw.Write(e.body); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: mtime.UTC()}
	cf.Config.Env = []string{"PATH=/bin"}
	cf.Config.Cmd = []string{"/bin/sh"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{"io.containerd.image.name": ref}))
}

// Result is a finished command.
type Result struct {
	Code           int
	Stdout, Stderr string
	// Err is why the command could not run to its end (not a non-zero
	// exit, which is Code).
	Err error
}

// Run runs argv with env to its end, for at most 3 minutes.
func Run(ctx context.Context, env, argv []string) Result {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil: // interrupted, or over its time
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	case errors.As(err, &ee):
		code, err = ee.ExitCode(), nil
	}
	return Result{code, out.String(), errb.String(), err}
}

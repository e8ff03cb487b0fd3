// Command docker measures what the Docker API costs a kiln VM: the time
// from `docker run --rm IMAGE sh -c 'echo hi'`, through the docker CLI and
// the Docker Engine API that the kiln daemon serves on <root>/run/docker.sock,
// to the command's exit, against `kiln run --rm --pull never` of the same
// image and command on the same daemon, alternating, in one run. The image
// is a small busybox one built here and loaded with `kiln load`; the root is
// a temporary one whose default kernel is -kernel. It prints each run's
// time, the medians and their ratio (goal: docker/kiln ≤ 1.05).
//
//	make build && go run ./bench/docker [-n 7] [-bin bin] [-kernel PATH]
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"kiln.dev/kiln/bench/internal/benchkit"
	"kiln.dev/kiln/internal/daemon"
)

// imageRef is what the benchmark's image is loaded as.
const imageRef = "kiln-bench/busybox:1"

func main() {
	n := flag.Int("n", 7, "runs of each")
	bin := flag.String("bin", "bin", "the directory of kiln and kiln-init (make build)")
	kernel := flag.String("kernel", "/var/lib/kiln/kernels/default/vmlinux", "guest kernel, imported as the root's default")
	flag.Parse()
	if err := run(*n, *bin, *kernel); err != nil {
		fmt.Fprintln(os.Stderr, "bench/docker:", err)
		os.Exit(1)
	}
}

func run(n int, bin, kernel string) error {
	if n < 1 {
		return fmt.Errorf("-n %d: want at least one run", n)
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	docker, err := exec.LookPath("docker")
	if err != nil {
		return errors.New("no docker CLI on PATH: apt-get install docker.io (only its client is used; its daemon is not started)")
	}
	kiln := filepath.Join(bin, "kiln")
	if _, err := os.Stat(kiln); err != nil {
		return fmt.Errorf("%w (make build)", err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("%w: run scripts/setup (apt-get install busybox-static)", err)
	}

	tmp, err := os.MkdirTemp("", "kiln-bench-docker-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "kiln")
	dockerConfig := filepath.Join(tmp, "docker-config")
	if err := os.MkdirAll(dockerConfig, 0o700); err != nil {
		return err
	}
	// The caller's KILN_* and DOCKER_* settings would point either path
	// elsewhere.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "KILN_") || strings.HasPrefix(kv, "DOCKER_")
	})
	env = append(env, "PATH="+bin+":"+os.Getenv("PATH"))
	dockerEnv := append(slices.Clone(env), "DOCKER_HOST=unix://"+daemon.DockerSocketPath(root),
		"DOCKER_CONFIG="+dockerConfig, "DOCKER_CLI_HINTS=false")
	defer benchkit.StopDaemon(root)

	kilnCmd := func(args ...string) error {
		argv := append([]string{kiln, "--root", root}, args...)
		if r := runCmd(env, argv); r.err != nil || r.code != 0 {
			return fmt.Errorf("%s: exit %d (%v): %s%s", strings.Join(argv, " "), r.code, r.err, r.stdout, r.stderr)
		}
		return nil
	}
	// docker's create names no kernel: the VM gets the root's default.
	if err := kilnCmd("kernel", "import", kernel); err != nil {
		return err
	}
	if err := kilnCmd("ps"); err != nil { // starts the daemon, and its Docker API
		return err
	}
	oci := filepath.Join(tmp, "oci")
	if err := writeImage(oci, bb); err != nil {
		return err
	}
	if err := kilnCmd("load", "oci:"+oci); err != nil {
		return err
	}

	viaDocker := []string{docker, "run", "--rm", imageRef, "sh", "-c", "echo hi"}
	viaKiln := []string{kiln, "--root", root, "run", "--rm", "--pull", "never", imageRef, "sh", "-c", "echo hi"}
	// Not counted: the first of each builds what later runs reuse (the
	// image's root filesystem, the template both restore from).
	if _, err := timed(dockerEnv, viaDocker); err != nil {
		return err
	}
	if _, err := timed(env, viaKiln); err != nil {
		return err
	}
	var ds, ks []time.Duration
	fmt.Printf("start to exit of `sh -c 'echo hi'` in a busybox image, %d runs each, alternating:\n", n)
	fmt.Printf("  run   docker run --rm   kiln run --rm\n")
	for i := 1; i <= n; i++ { // alternating, so drift in the host's load hits both
		d, err := timed(dockerEnv, viaDocker)
		if err != nil {
			return err
		}
		k, err := timed(env, viaKiln)
		if err != nil {
			return err
		}
		ds, ks = append(ds, d), append(ks, k)
		fmt.Printf("  %3d   %12d ms   %10d ms\n", i, d.Milliseconds(), k.Milliseconds())
	}
	if r := runCmd(env, []string{kiln, "--root", root, "ps", "-a", "-q"}); r.err != nil || r.code != 0 || strings.TrimSpace(r.stdout) != "" {
		return fmt.Errorf("after the runs, kiln ps -a -q: exit %d (%v): %q %s", r.code, r.err, r.stdout, r.stderr)
	}
	d, k := benchkit.Median(ds), benchkit.Median(ks)
	fmt.Printf("median of %d:\n", n)
	fmt.Printf("  docker run --rm through docker.sock:  %5d ms\n", d.Milliseconds())
	fmt.Printf("  kiln run --rm --pull never:           %5d ms\n", k.Milliseconds())
	fmt.Printf("  ratio docker/kiln:                    %.3f (goal ≤ 1.05)\n", float64(d)/float64(k))
	return nil
}

// writeImage writes, as an OCI layout at dir, an image of one layer:
// busybox (bb) at /bin/busybox with sh and echo linked to it.
func writeImage(dir string, bb []byte) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))},
		{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "busybox", Mode: 0o777},
		{Typeflag: tar.TypeSymlink, Name: "bin/echo", Linkname: "busybox", Mode: 0o777},
	} {
		h.ModTime, h.Format = mtime, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(bb); err != nil {
				return err
			}
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
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{"io.containerd.image.name": imageRef}))
}

type result struct {
	code           int
	stdout, stderr string
	err            error
}

// runCmd runs argv to its end, for at most 3 minutes.
func runCmd(env, argv []string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		code, err = ee.ExitCode(), nil
	}
	return result{code, out.String(), errb.String(), err}
}

// timed runs argv and returns the time from its start to its exit; it
// must print exactly "hi" and exit 0.
func timed(env, argv []string) (time.Duration, error) {
	start := time.Now()
	r := runCmd(env, argv)
	took := time.Since(start)
	if r.err != nil || r.code != 0 || r.stdout != "hi\n" {
		return 0, fmt.Errorf("%s: exit %d (%v), stdout %q: %s", strings.Join(argv, " "), r.code, r.err, r.stdout, r.stderr)
	}
	return took, nil
}

// Command image measures how long kiln takes to turn an image in a
// registry into a VM root filesystem, against the standard tool pipeline,
// on two images served from an in-process registry on loopback:
//
//   - small: a Debian userland made by debootstrap (many small files; from
//     scripts/fetch-test-rootfs), in two layers;
//   - large: four 25 MiB files, each half random bytes and half text.
//
// For each it times, interleaved, n times:
//
//	(a) kiln: pull into a fresh store, then build the root filesystem;
//	(b) skopeo copy (to an OCI layout) → umoci unpack → mkfs.ext4 -d;
//	(c) kiln's cache hit: what a second run of the image does before boot,
//	    as the image store's Get + RootFS, and as a whole vm.Create
//	    (the VM's writable disk and initrd included, then removed).
//
// and prints the medians, a/b (goal ≤ 0.5) and c (goal < 100 ms); "a
// build" is the part of (a) that builds the root filesystem (decompress,
// flatten, tar2sqfs), the conversion alone. skopeo
// and umoci are installed with apt-get when missing (they are needed only
// here).
//
//	go run ./bench/image [-n 5] [-rootfs DIR] [-init bin/kiln-init] [-kernel PATH]
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/bench/internal/benchkit"
	"kiln.dev/kiln/internal/image"
	"kiln.dev/kiln/internal/image/layerpack"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vm"
)

func main() {
	n := flag.Int("n", 5, "runs of each kind (at least 3)")
	rootfs := flag.String("rootfs", "/var/cache/kiln-test/debian-rootfs", "a Debian userland (scripts/fetch-test-rootfs)")
	initBin := flag.String("init", "bin/kiln-init", "kiln-init, for the vm.Create figure (skipped when missing)")
	kernel := flag.String("kernel", "/var/lib/kiln/kernels/default/vmlinux", "guest kernel, for the vm.Create figure")
	flag.Parse()
	if err := run(*n, *rootfs, *initBin, *kernel); err != nil {
		fmt.Fprintln(os.Stderr, "bench/image:", err)
		os.Exit(1)
	}
}

func run(n int, rootfs, initBin, kernel string) error {
	if n < 3 {
		return fmt.Errorf("-n %d: use at least 3 runs", n)
	}
	if _, err := os.Stat(filepath.Join(rootfs, ".complete")); err != nil {
		return fmt.Errorf("no Debian userland at %s: run scripts/fetch-test-rootfs", rootfs)
	}
	if err := ensureTools(); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "kiln-bench-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")

	fmt.Fprintln(os.Stderr, "bench/image: building and pushing the images")
	small, err := dirImage(rootfs)
	if err != nil {
		return err
	}
	large, err := largeImage()
	if err != nil {
		return err
	}
	images := []struct {
		name string
		img  v1.Image
	}{{"small (debootstrap)", small}, {"large (4×25 MiB)", large}}

	fmt.Printf("%-20s %8s %8s %8s %6s %12s %14s %10s\n", "image", "a kiln", "a build", "b tools", "a/b", "c RootFS hit", "c Create hit", "rootfs")
	for i, im := range images {
		ref := fmt.Sprintf("%s/bench/img%d:1", host, i)
		r, err := name.ParseReference(ref)
		if err != nil {
			return err
		}
		if err := remote.Write(r, im.img); err != nil {
			return fmt.Errorf("pushing %s: %w", ref, err)
		}
		var a, aBuild, b, cFS, cCreate []time.Duration
		var size int64
		for j := 0; j < n; j++ { // interleaved, so drift in host load hits both
			d, build, sz, err := kilnPull(work, ref)
			if err != nil {
				return err
			}
			a, aBuild, size = append(a, d), append(aBuild, build), sz
			if d, err = toolPipeline(work, ref); err != nil {
				return err
			}
			b = append(b, d)
		}
		// The cache hit: a store with the image and its rootfs in place.
		root := filepath.Join(work, "warm")
		if _, _, _, err := kilnPullIn(root, ref); err != nil {
			return err
		}
		for j := 0; j < n; j++ {
			d, err := cacheHit(root, ref)
			if err != nil {
				return err
			}
			cFS = append(cFS, d)
			if d, err = createHit(root, ref, initBin, kernel); err != nil {
				return err
			}
			if d > 0 {
				cCreate = append(cCreate, d)
			}
		}
		os.RemoveAll(root)
		ma, mb := benchkit.Median(a), benchkit.Median(b)
		create := "n/a"
		if len(cCreate) > 0 {
			create = ms(benchkit.Median(cCreate))
		}
		fmt.Printf("%-20s %8s %8s %8s %6.2f %12s %14s %9.1fM\n", im.name, secs(ma), secs(benchkit.Median(aBuild)), secs(mb), float64(ma)/float64(mb), ms(benchkit.Median(cFS)), create, float64(size)/(1<<20))
	}
	fmt.Println("goals: a/b ≤ 0.5; c < 100 ms. a = kiln pull + rootfs build (fresh store); b = skopeo copy → umoci unpack → mkfs.ext4 -d; medians of", n)
	return nil
}

func ensureTools() error {
	var missing []string
	for _, t := range []string{"skopeo", "umoci"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "bench/image: installing %s (for the baseline only)\n", strings.Join(missing, " "))
		cmd := exec.Command("apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("installing %s: %w\n%s", strings.Join(missing, " "), err, out)
		}
	}
	for _, t := range []string{"mkfs.ext4", "tar2sqfs"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found: run scripts/setup", t)
		}
	}
	return nil
}

// kilnPull times a pull into a fresh store and the rootfs build, and
// returns the time of the whole, of the build alone, and the rootfs size.
func kilnPull(work, ref string) (time.Duration, time.Duration, int64, error) {
	root := filepath.Join(work, "kiln")
	defer os.RemoveAll(root)
	return kilnPullIn(root, ref)
}

func kilnPullIn(root, ref string) (time.Duration, time.Duration, int64, error) {
	start := time.Now()
	s, err := image.Open(root)
	if err != nil {
		return 0, 0, 0, err
	}
	img, err := s.Pull(context.Background(), ref, image.PullOptions{})
	if err != nil {
		return 0, 0, 0, err
	}
	built := time.Now()
	fs, err := s.RootFS(context.Background(), img)
	if err != nil {
		return 0, 0, 0, err
	}
	return time.Since(start), time.Since(built), fs.Size, nil
}

// toolPipeline times skopeo copy → umoci unpack → mkfs.ext4 -d.
func toolPipeline(work, ref string) (time.Duration, error) {
	dir := filepath.Join(work, "tools")
	defer os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	layout := filepath.Join(dir, "layout")
	bundle := filepath.Join(dir, "bundle")
	disk := filepath.Join(dir, "rootfs.ext4")
	start := time.Now()
	if err := cmd("skopeo", "copy", "--quiet", "--insecure-policy", "--src-tls-verify=false",
		"docker://"+ref, "oci:"+layout+":bench"); err != nil {
		return 0, err
	}
	if err := cmd("umoci", "unpack", "--image", layout+":bench", bundle); err != nil {
		return 0, err
	}
	// mkfs.ext4 -d needs a file big enough for the tree: its size plus a
	// margin for metadata.
	size := treeSize(filepath.Join(bundle, "rootfs"))*13/10 + 64<<20
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		return 0, err
	}
	if err := os.Truncate(disk, size); err != nil {
		return 0, err
	}
	if err := cmd("mkfs.ext4", "-q", "-F", "-d", filepath.Join(bundle, "rootfs"), disk); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func treeSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

func cmd(name string, args ...string) error {
	c := exec.Command(name, args...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out.Bytes())
	}
	return nil
}

// cacheHit times what the image store does for a second run: look the
// image up and find its built rootfs.
func cacheHit(root, ref string) (time.Duration, error) {
	start := time.Now()
	s, err := image.Open(root)
	if err != nil {
		return 0, err
	}
	img, err := s.Get(ref)
	if err != nil {
		return 0, err
	}
	if _, err := s.RootFS(context.Background(), img); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// createHit times a whole vm.Create of the cached image (the VM's
// writable disk and initrd included), then removes the VM. It returns 0
// when kiln-init or the kernel is missing.
func createHit(root, ref, initBin, kernel string) (time.Duration, error) {
	if _, err := os.Stat(initBin); err != nil {
		return 0, nil
	}
	if _, err := os.Stat(kernel); err != nil {
		return 0, nil
	}
	abs, _ := filepath.Abs(initBin)
	rt, err := vm.New(root, vm.WithInit(abs))
	if err != nil {
		return 0, err
	}
	start := time.Now()
	v, err := rt.Create(context.Background(), vm.Spec{VMConfig: api.VMConfig{Image: ref, Pull: options.PullNever, Kernel: kernel, Cmd: []string{"/bin/true"}}})
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	return d, v.Remove()
}

// dirImage packs a directory tree into a two-layer image: /usr, then the
// rest, with owners, modes, links and device nodes as on disk.
func dirImage(root string) (v1.Image, error) {
	layers, err := layerpack.Dir(root, 2, func(top string) int {
		if top == "usr" {
			return 0
		}
		return 1
	}, ".complete")
	if err != nil {
		return nil, err
	}
	return imageOf(layers...)
}

// largeImage is four 25 MiB files, each half random bytes (incompressible)
// and half text, in two layers.
func largeImage() (v1.Image, error) {
	var layers [][]byte
	for l := 0; l < 2; l++ {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "data/", Mode: 0o755})
		for f := 0; f < 2; f++ {
			body := make([]byte, 25<<20)
			if _, err := rand.Read(body[:len(body)/2]); err != nil {
				return nil, err
			}
			line := []byte("the quick brown fox jumps over the lazy dog 0123456789\n")
			for i := len(body) / 2; i < len(body); i += copy(body[i:], line) {
			}
			h := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("data/big-%d-%d", l, f), Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(1700000000, 0)}
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			if _, err := tw.Write(body); err != nil {
				return nil, err
			}
		}
		if err := tw.Close(); err != nil {
			return nil, err
		}
		layers = append(layers, buf.Bytes())
	}
	return imageOf(layers...)
}

// imageOf makes a linux/amd64 image of uncompressed layer tars (gzipped
// for the registry, as images usually are).
func imageOf(layers ...[]byte) (v1.Image, error) {
	img := empty.Image
	for _, l := range layers {
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(l)), nil
		})
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Cmd = []string{"/bin/sh"}
	return mutate.ConfigFile(img, cf)
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
func ms(d time.Duration) string   { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

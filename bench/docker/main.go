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
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

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
	if _, err := os.Stat("/bin/busybox"); err != nil {
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
		if r := benchkit.Run(context.Background(), env, argv); r.Err != nil || r.Code != 0 {
			return fmt.Errorf("%s: exit %d (%v): %s%s", strings.Join(argv, " "), r.Code, r.Err, r.Stdout, r.Stderr)
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
	if err := benchkit.WriteBusyboxImage(oci, imageRef, []string{"sh", "echo"}, nil); err != nil {
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
	if r := benchkit.Run(context.Background(), env, []string{kiln, "--root", root, "ps", "-a", "-q"}); r.Err != nil || r.Code != 0 || strings.TrimSpace(r.Stdout) != "" {
		return fmt.Errorf("after the runs, kiln ps -a -q: exit %d (%v): %q %s", r.Code, r.Err, r.Stdout, r.Stderr)
	}
	d, k := benchkit.Median(ds), benchkit.Median(ks)
	fmt.Printf("median of %d:\n", n)
	fmt.Printf("  docker run --rm through docker.sock:  %5d ms\n", d.Milliseconds())
	fmt.Printf("  kiln run --rm --pull never:           %5d ms\n", k.Milliseconds())
	fmt.Printf("  ratio docker/kiln:                    %.3f (goal ≤ 1.05)\n", float64(d)/float64(k))
	return nil
}

// timed runs argv and returns the time from its start to its exit; it
// must print exactly "hi" and exit 0.
func timed(env, argv []string) (time.Duration, error) {
	start := time.Now()
	r := benchkit.Run(context.Background(), env, argv)
	took := time.Since(start)
	if r.Err != nil || r.Code != 0 || r.Stdout != "hi\n" {
		return 0, fmt.Errorf("%s: exit %d (%v), stdout %q: %s", strings.Join(argv, " "), r.Code, r.Err, r.Stdout, r.Stderr)
	}
	return took, nil
}

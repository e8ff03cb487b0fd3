// Command shim measures what containerd costs a kiln VM: the time from
// `ctr run --rm --runtime io.containerd.kiln.v2 --rootfs DIR` to the
// program's first line, through a containerd it starts (its own root,
// state and socket) and kiln's shim, against `kiln run --rm --rootfs DIR`
// of the same program on the same kiln daemon, alternating, in one run.
// It prints the medians and their ratio.
//
//	make build && go run ./bench/shim [-n 7] [-bin bin] [-kernel PATH]
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"kiln.dev/kiln/bench/internal/benchkit"
)

func main() {
	n := flag.Int("n", 7, "runs of each")
	bin := flag.String("bin", "bin", "the directory of kiln, kiln-init, containerd-shim-kiln-v2 and hello (make build)")
	kernel := flag.String("kernel", "/var/lib/kiln/kernels/default/vmlinux", "guest kernel")
	flag.Parse()
	if err := run(*n, *bin, *kernel); err != nil {
		fmt.Fprintln(os.Stderr, "bench/shim:", err)
		os.Exit(1)
	}
}

func run(n int, bin, kernel string) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	for _, p := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not found: run scripts/setup, which installs containerd", p)
		}
	}
	tmp, err := os.MkdirTemp("", "kiln-bench-shim-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	kilnRoot, sock := filepath.Join(tmp, "kiln"), filepath.Join(tmp, "containerd.sock")
	env := append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "KILN_ROOT="+kilnRoot, "KILN_KERNEL="+kernel)
	defer benchkit.StopDaemon(kilnRoot)

	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		return err
	}
	hello, err := os.ReadFile(filepath.Join(bin, "hello"))
	if err != nil {
		return fmt.Errorf("%w (make build)", err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "hello"), hello, 0o755); err != nil {
		return err
	}
	conf := filepath.Join(tmp, "containerd.toml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n",
		filepath.Join(tmp, "croot"), filepath.Join(tmp, "cstate"), sock, sock+".ttrpc")), 0o600); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(tmp, "containerd.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cd := exec.Command("containerd", "--config", conf)
	cd.Env, cd.Stdout, cd.Stderr = env, logf, logf
	if err := cd.Start(); err != nil {
		return err
	}
	defer func() { cd.Process.Signal(syscall.SIGTERM); cd.Wait() }()
	for deadline := time.Now().Add(30 * time.Second); exec.Command("ctr", "--address", sock, "version").Run() != nil; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not answer at %s", sock)
		}
	}

	kiln := filepath.Join(bin, "kiln")
	ctrRun := func(i int) []string {
		return []string{"ctr", "--address", sock, "run", "--rm", "--runtime", "io.containerd.kiln.v2", "--rootfs", rootfs, "bench" + strconv.Itoa(i), "/bin/hello"}
	}
	kilnRun := []string{kiln, "--root", kilnRoot, "run", "--rm", "--kernel", kernel, "--rootfs", rootfs, "/bin/hello"}
	// Not counted: the first of each starts the daemon and makes the
	// template both then restore from.
	if _, err := firstLine(env, ctrRun(0)); err != nil {
		return err
	}
	if _, err := firstLine(env, kilnRun); err != nil {
		return err
	}
	var viaCtr, viaKiln []time.Duration
	for i := 1; i <= n; i++ { // alternating, so drift in the host's load hits both
		d, err := firstLine(env, ctrRun(i))
		if err != nil {
			return err
		}
		viaCtr = append(viaCtr, d)
		if d, err = firstLine(env, kilnRun); err != nil {
			return err
		}
		viaKiln = append(viaKiln, d)
	}
	c, k := benchkit.Median(viaCtr), benchkit.Median(viaKiln)
	fmt.Printf("start to the program's first line, median of %d:\n", n)
	fmt.Printf("  ctr run --rm through kiln's shim:  %5d ms\n", c.Milliseconds())
	fmt.Printf("  kiln run --rm --rootfs:            %5d ms\n", k.Milliseconds())
	fmt.Printf("  ratio ctr/kiln:                    %.2f\n", float64(c)/float64(k))
	return nil
}

// firstLine runs argv and returns the time to its first line of output,
// which must be hello's greeting; it waits for the command's end.
func firstLine(env, argv []string) (time.Duration, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	br := bufio.NewReader(out)
	line, rerr := br.ReadString('\n')
	took := time.Since(start)
	_, _ = io.Copy(io.Discard, br)
	werr := cmd.Wait()
	if rerr != nil || !strings.HasPrefix(line, "hello from") || werr != nil {
		return 0, fmt.Errorf("%s: first line %q (%v), exit %v: %s", strings.Join(argv, " "), line, rerr, werr, stderr.String())
	}
	return took, nil
}

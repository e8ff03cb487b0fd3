// Command exec measures `kiln exec`: the round trip of `kiln exec VM hello
// -zero 0` (the whole CLI process, median of -n) against `kiln inspect VM`
// (the same CLI and daemon, no guest) and against running the same program
// on the host; and the throughput of a large stdout stream through exec
// against the same program writing to a pipe on the host.
//
//	go run ./bench/exec [-n 20] [-mib 256]
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	n := flag.Int("n", 20, "repetitions of each round trip")
	mib := flag.Int("mib", 256, "MiB streamed through exec")
	kiln := flag.String("kiln", "bin/kiln", "the kiln binary")
	prog := flag.String("program", "bin/hello", "a static program (examples/hello)")
	kernel := flag.String("kernel", "/var/lib/kiln/kernels/default/vmlinux", "guest kernel")
	flag.Parse()
	if err := run(*n, *mib, *kiln, *prog, *kernel); err != nil {
		fmt.Fprintln(os.Stderr, "bench/exec:", err)
		os.Exit(1)
	}
}

func run(n, mib int, kiln, prog, kernel string) error {
	root, err := os.MkdirTemp("", "kiln-bench-exec-")
	if err != nil {
		return err
	}
	k := func(args ...string) *exec.Cmd {
		return exec.Command(kiln, append([]string{"--root", root}, args...)...)
	}
	must := func(args ...string) error {
		if out, err := k(args...).CombinedOutput(); err != nil {
			return fmt.Errorf("kiln %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	defer func() {
		_ = must("rm", "-f", "bench")
		if b, err := os.ReadFile(filepath.Join(root, "run", "kiln.pid")); err == nil {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			syscall.Kill(pid, syscall.SIGTERM)
		}
		os.RemoveAll(root)
	}()
	if err := must("run", "-d", "--name", "bench", "--kernel", kernel, "--memory", "256m", prog, "-sleep", "1h"); err != nil {
		return err
	}
	// Wait for the program, and warm the agent connection.
	deadline := time.Now().Add(time.Minute)
	for k("exec", "bench", "hello", "-zero", "0").Run() != nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("exec never worked in the VM")
		}
		time.Sleep(200 * time.Millisecond)
	}

	execRT, err := median(n, func() error { return k("exec", "bench", "hello", "-zero", "0").Run() })
	if err != nil {
		return err
	}
	inspectRT, err := median(n, func() error { return k("inspect", "bench").Run() })
	if err != nil {
		return err
	}
	hostRT, err := median(n, func() error { return exec.Command(prog, "-zero", "0").Run() })
	if err != nil {
		return err
	}
	fmt.Printf("exec round trip (median of %d): kiln exec %v, kiln inspect %v, host %v\n", n, execRT, inspectRT, hostRT)
	fmt.Printf("  exec/inspect %.1fx, exec/host %.1fx\n", ratio(execRT, inspectRT), ratio(execRT, hostRT))

	size := int64(mib) << 20
	through, err := stream(k("exec", "bench", "hello", "-zero", strconv.FormatInt(size, 10)), size)
	if err != nil {
		return err
	}
	host, err := stream(exec.Command(prog, "-zero", strconv.FormatInt(size, 10)), size)
	if err != nil {
		return err
	}
	fmt.Printf("stdout stream of %d MiB: through exec %.1f MiB/s, on the host %.1f MiB/s\n", mib, mibps(size, through), mibps(size, host))
	fmt.Printf("  exec/host throughput %.4fx\n", ratio(host, through))
	return nil
}

func median(n int, f func() error) (time.Duration, error) {
	ds := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if err := f(); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(t))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], nil
}

// stream runs cmd, reads its stdout to the end and checks its length.
func stream(cmd *exec.Cmd, want int64) (time.Duration, error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	t := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	got, err := io.Copy(io.Discard, out)
	if err != nil {
		return 0, err
	}
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("%s: %w", cmd, err)
	}
	d := time.Since(t)
	if got != want {
		return 0, fmt.Errorf("%s: %d bytes, want %d", cmd, got, want)
	}
	return d, nil
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

func mibps(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

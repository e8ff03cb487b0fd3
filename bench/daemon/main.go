// Command daemon measures the kiln daemon with many VMs running: the
// latency of `kiln ps` and `kiln inspect` (the whole CLI process, median),
// the daemon's memory, and the time from `kiln run -d` returning to the
// VM's program printing its first line, against a raw QEMU boot of the same
// kernel and initrd measured the same way in the same run.
//
//	go run ./bench/daemon [-vms 20] [-n 20]
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/bench/internal/benchkit"
	"kiln.dev/kiln/internal/vmm"
	"kiln.dev/kiln/internal/vmm/qemu"
)

func main() {
	vms := flag.Int("vms", 20, "VMs to keep running")
	n := flag.Int("n", 20, "repetitions of each CLI command")
	kiln := flag.String("kiln", "bin/kiln", "the kiln binary")
	prog := flag.String("program", "bin/hello", "a static program")
	kernel := flag.String("kernel", "/var/lib/kiln/kernels/default/vmlinux", "guest kernel")
	flag.Parse()
	if err := run(*vms, *n, *kiln, *prog, *kernel); err != nil {
		fmt.Fprintln(os.Stderr, "bench/daemon:", err)
		os.Exit(1)
	}
}

func run(vms, n int, kiln, prog, kernel string) error {
	root, err := os.MkdirTemp("", "kiln-bench-daemon-")
	if err != nil {
		return err
	}
	k := func(args ...string) ([]byte, error) {
		out, err := exec.Command(kiln, append([]string{"--root", root}, args...)...).CombinedOutput()
		if err != nil {
			return out, fmt.Errorf("kiln %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return out, nil
	}
	defer func() {
		k(append([]string{"rm", "-f"}, names(vms)...)...)
		if b, err := os.ReadFile(filepath.Join(root, "run", "kiln.pid")); err == nil {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			syscall.Kill(pid, syscall.SIGTERM)
		}
		os.RemoveAll(root)
	}()
	if _, err := k("ps"); err != nil { // start the daemon
		return err
	}

	// Start latency, on an otherwise idle host: the first three VMs.
	var startKiln []time.Duration
	for i, name := range names(vms) {
		returned, first, err := runDetached(kiln, root, kernel, prog, name)
		if err != nil {
			return err
		}
		if i < 3 {
			startKiln = append(startKiln, first.Sub(returned))
		}
	}
	var startRaw []time.Duration
	for range 3 {
		d, err := rawFirstLine(root, kernel, kiln, prog)
		if err != nil {
			return err
		}
		startRaw = append(startRaw, d)
	}

	out, err := k("ps", "-q")
	if err != nil {
		return err
	}
	if got := len(strings.Fields(string(out))); got != vms {
		return fmt.Errorf("want %d running VMs, ps shows %d", vms, got)
	}
	ps := timeN(n, func() error { _, err := k("ps"); return err })
	inspect := timeN(n, func() error { _, err := k("inspect", "vm"+strconv.Itoa(vms/2)); return err })
	version := timeN(n, func() error { _, err := exec.Command(kiln, "--help").Output(); return err })
	pidb, _ := os.ReadFile(filepath.Join(root, "run", "kiln.pid"))
	pid := strings.TrimSpace(string(pidb))
	rss, pss := memOf(pid)

	fmt.Printf("with %d VMs running (TCG, 128 MiB each):\n", vms)
	fmt.Printf("  kiln ps:                %6.1f ms median of %d (CLI process, start to exit)\n", ms(benchkit.Median(ps)), n)
	fmt.Printf("  kiln inspect (one VM): %6.1f ms median of %d\n", ms(benchkit.Median(inspect)), n)
	fmt.Printf("  kiln --help (baseline): %6.1f ms median of %d: the CLI process alone\n", ms(benchkit.Median(version)), n)
	fmt.Printf("  daemon memory:          RSS %.1f MiB, PSS %.1f MiB\n", rss, pss)
	fmt.Printf("time to the program's first line (idle host, median of 3):\n")
	fmt.Printf("  kiln run -d returned -> first line: %6.0f ms\n", ms(benchkit.Median(startKiln)))
	fmt.Printf("  raw QEMU started     -> first line: %6.0f ms\n", ms(benchkit.Median(startRaw)))
	fmt.Printf("  ratio:                              %6.3f\n", float64(benchkit.Median(startKiln))/float64(benchkit.Median(startRaw)))
	return nil
}

func names(n int) []string {
	var out []string
	for i := range n {
		out = append(out, "vm"+strconv.Itoa(i))
	}
	return out
}

// runDetached runs one VM with `run -d` and returns when the command
// returned and when the program's first line reached its log.
func runDetached(kiln, root, kernel, prog, name string) (time.Time, time.Time, error) {
	out, err := exec.Command(kiln, "--root", root, "run", "-d", "--name", name, "--memory", "128m", "--kernel", kernel, prog, "-sleep", "1h").CombinedOutput()
	returned := time.Now()
	if err != nil {
		return returned, returned, fmt.Errorf("run -d: %w\n%s", err, out)
	}
	cmd := exec.Command(kiln, "--root", root, "logs", "-f", "-t", name)
	pipe, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return returned, returned, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		ts, rest, _ := strings.Cut(sc.Text(), " ")
		if strings.HasPrefix(rest, "hello from") {
			t, err := time.Parse(time.RFC3339Nano, ts)
			return returned, t, err
		}
	}
	return returned, returned, fmt.Errorf("no output from %s", name)
}

// rawFirstLine boots the initrd kiln made for vm0 with a plain QEMU command
// and times from QEMU's start to the first line on the stdout port.
func rawFirstLine(root, kernel, kiln, prog string) (time.Duration, error) {
	initrds, _ := filepath.Glob(filepath.Join(root, "vms", "*", "initrd"))
	if len(initrds) == 0 {
		return 0, fmt.Errorf("no initrd to boot")
	}
	dir, err := os.MkdirTemp(root, "raw-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "out")
	os.WriteFile(out, nil, 0o600)
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, out, unix.IN_MODIFY); err != nil {
		return 0, err
	}
	cmd := exec.Command("qemu-system-x86_64",
		"-M", "microvm,acpi=off,rtc=on,pit=on,pic=on,isa-serial=on", "-accel", "tcg", "-cpu", "max", "-m", "128M",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrds[0],
		"-append", qemu.Cmdline(vmm.AccelTCG, false, qemu.TSCKHz()),
		"-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0",
		"-device", "virtio-serial-device,max_ports=5",
		"-chardev", "file,id=s,path="+filepath.Join(dir, "status"), "-device", "virtserialport,chardev=s,name=kiln.exit",
		"-chardev", "file,id=o,path="+out, "-device", "virtserialport,chardev=o,name=kiln.stdout",
		"-chardev", "file,id=e,path="+filepath.Join(dir, "err"), "-device", "virtserialport,chardev=e,name=kiln.stderr")
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	buf := make([]byte, 4096)
	for {
		if _, err := unix.Read(fd, buf); err != nil {
			return 0, err
		}
		if b, _ := os.ReadFile(out); bytes.Contains(b, []byte("hello from")) {
			return time.Since(start), nil
		}
	}
}

func timeN(n int, fn func() error) []time.Duration {
	var out []time.Duration
	for range n {
		t := time.Now()
		if err := fn(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		out = append(out, time.Since(t))
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func memOf(pid string) (rss, pss float64) {
	for _, f := range []string{"/proc/" + pid + "/smaps_rollup"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			fs := strings.Fields(l)
			if len(fs) >= 2 {
				v, _ := strconv.ParseFloat(fs[1], 64)
				switch fs[0] {
				case "Rss:":
					rss = v / 1024
				case "Pss:":
					pss = v / 1024
				}
			}
		}
	}
	return rss, pss
}

// Command hostile measures what a hostile guest costs the host's daemon:
// for each attack, the daemon's resident set and the latency of `kiln ps`
// while it runs, against the same figures with an idle VM, in the same
// run. The attacking guest is examples/hello:
//
//   - idle:            a VM that sleeps
//   - console flood:   -console BYTES to its serial console
//   - stdout flood:    -lines N numbered lines to stdout
//   - stdout backlog:  -lines N written while the daemon is killed; a new
//     daemon then takes the backlog
//
// Each attack also reports what the host kept on disk for it.
//
//	go run ./bench/hostile [-console 2000000] [-lines 2000000]
package main

import (
	"bytes"
	"flag"
	"fmt"
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
	consoleBytes := flag.Int("console", 2_000_000, "bytes the console flood writes")
	lines := flag.Int("lines", 2_000_000, "lines the stdout floods write")
	kiln := flag.String("kiln", "bin/kiln", "the kiln binary")
	prog := flag.String("program", "bin/hello", "the guest program (examples/hello)")
	kernel := flag.String("kernel", "/var/lib/kiln/kernels/default/vmlinux", "guest kernel")
	flag.Parse()
	b, err := newBench(*kiln, *prog, *kernel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/hostile:", err)
		os.Exit(1)
	}
	defer b.close()
	if err := b.run(*consoleBytes, *lines); err != nil {
		fmt.Fprintln(os.Stderr, "bench/hostile:", err)
		os.Exit(1)
	}
}

type bench struct {
	root, kiln, prog, kernel string
}

func newBench(kiln, prog, kernel string) (*bench, error) {
	root, err := os.MkdirTemp("", "kiln-bench-hostile-")
	if err != nil {
		return nil, err
	}
	kiln, _ = filepath.Abs(kiln)
	prog, _ = filepath.Abs(prog)
	return &bench{root: root, kiln: kiln, prog: prog, kernel: kernel}, nil
}

func (b *bench) cmd(args ...string) *exec.Cmd {
	return exec.Command(b.kiln, append([]string{"--root", b.root}, args...)...)
}

func (b *bench) must(args ...string) (string, error) {
	out, err := b.cmd(args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("kiln %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (b *bench) daemonPID() int {
	s, _ := os.ReadFile(filepath.Join(b.root, "run", "kiln.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(s)))
	return pid
}

func (b *bench) close() {
	_, _ = b.must("rm", "-f", "victim", "attacker")
	if pid := b.daemonPID(); pid > 0 {
		syscall.Kill(pid, syscall.SIGTERM)
		time.Sleep(time.Second)
	}
	os.RemoveAll(b.root)
}

// sample is what was seen of the daemon while an attack ran.
type sample struct {
	rssMax int64 // bytes
	ps     []time.Duration
}

func (s sample) psMedian() time.Duration {
	d := append([]time.Duration(nil), s.ps...)
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

func (s sample) psMax() time.Duration {
	m := time.Duration(0)
	for _, d := range s.ps {
		m = max(m, d)
	}
	return m
}

// watch samples the daemon's RSS and times `kiln ps` until done returns
// true (checked between samples), for at least min.
func (b *bench) watch(min time.Duration, done func() bool) (sample, error) {
	var s sample
	start := time.Now()
	for {
		if rss := rssOf(b.daemonPID()); rss > s.rssMax {
			s.rssMax = rss
		}
		t := time.Now()
		if _, err := b.must("ps", "-a"); err != nil {
			return s, err
		}
		s.ps = append(s.ps, time.Since(t))
		if time.Since(start) >= min && done() {
			return s, nil
		}
		if time.Since(start) > 10*time.Minute {
			return s, fmt.Errorf("the attack did not end within 10 minutes")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func rssOf(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// logsHave reports whether the VM's logs (or console) contain want.
func (b *bench) logsHave(vm, want string, console bool) bool {
	args := []string{"logs", "--tail", "20", vm}
	if console {
		args = append(args, "--console")
	}
	out, err := b.cmd(args...).Output()
	return err == nil && bytes.Contains(out, []byte(want))
}

func (b *bench) stateOf(vm string) string {
	out, _ := b.cmd("inspect", "--format", "{{.State.Status}}", vm).Output()
	return strings.TrimSpace(string(out))
}

// diskOf returns the bytes the files of the VM's directory take on disk.
func (b *bench) diskOf(vm string) int64 {
	id, _ := b.cmd("inspect", "--format", "{{.ID}}", vm).Output()
	var total int64
	dir := filepath.Join(b.root, "vms", strings.TrimSpace(string(id)))
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && !strings.HasSuffix(p, "initrd") {
			total += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return total
}

func (b *bench) run(consoleBytes, lines int) error {
	run := func(name string, args ...string) error {
		_, err := b.must(append([]string{"run", "-d", "--name", name, "--kernel", b.kernel, "--memory", "128m", b.prog}, args...)...)
		return err
	}
	// The victim runs throughout: the attacks must not reach it.
	if err := run("victim", "-sleep", "1h"); err != nil {
		return err
	}
	idle, err := b.watch(10*time.Second, func() bool { return true })
	if err != nil {
		return err
	}
	type result struct {
		name string
		s    sample
		disk int64
		took time.Duration
	}
	var results []result
	attack := func(name string, start func() error, done func() bool) error {
		t := time.Now()
		if err := start(); err != nil {
			return err
		}
		s, err := b.watch(time.Second, func() bool { return done() || b.stateOf("attacker") != "running" })
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if !done() {
			out, _ := b.cmd("inspect", "--format", "{{.State.Status}} {{.State.Error}}", "attacker").Output()
			return fmt.Errorf("%s: the attacker ended before the attack did: %s", name, out)
		}
		results = append(results, result{name, s, b.diskOf("attacker"), time.Since(t)})
		_, err = b.must("rm", "-f", "attacker")
		return err
	}

	if err := attack(fmt.Sprintf("console flood (%d B)", consoleBytes),
		func() error { return run("attacker", "-console", strconv.Itoa(consoleBytes), "-sleep", "1h") },
		func() bool { return b.logsHave("attacker", "console flood done", false) }); err != nil {
		return err
	}
	last := fmt.Sprintf("line %d of %d", lines, lines)
	if err := attack(fmt.Sprintf("stdout flood (%d lines)", lines),
		func() error { return run("attacker", "-lines", strconv.Itoa(lines), "-sleep", "1h") },
		func() bool { return b.logsHave("attacker", last, false) }); err != nil {
		return err
	}
	if err := attack(fmt.Sprintf("stdout backlog (%d lines, daemon killed)", lines),
		func() error {
			if err := run("attacker", "-lines", strconv.Itoa(lines), "-sleep", "1h"); err != nil {
				return err
			}
			// Kill the daemon while the guest writes; the next command
			// starts a new one, which takes the backlog.
			syscall.Kill(b.daemonPID(), syscall.SIGKILL)
			time.Sleep(20 * time.Second)
			_, err := b.must("ps")
			return err
		},
		func() bool { return b.logsHave("attacker", last, false) }); err != nil {
		return err
	}
	if st := b.stateOf("victim"); st != "running" {
		return fmt.Errorf("the victim VM is %s after the attacks", st)
	}

	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	fmt.Printf("%-44s %10s %8s %12s %12s %8s %10s\n", "attack", "took", "RSS MiB", "ps median", "ps max", "RSS/idle", "ps/idle")
	fmt.Printf("%-44s %10s %8.1f %12v %12v %8s %10s\n", "idle (a sleeping VM)", "10s", mib(idle.rssMax), idle.psMedian().Round(time.Millisecond), idle.psMax().Round(time.Millisecond), "1.00x", "1.00x")
	for _, r := range results {
		fmt.Printf("%-44s %10v %8.1f %12v %12v %7.2fx %9.2fx   (host disk kept: %.1f MiB)\n", r.name, r.took.Round(time.Second), mib(r.s.rssMax),
			r.s.psMedian().Round(time.Millisecond), r.s.psMax().Round(time.Millisecond),
			float64(r.s.rssMax)/float64(idle.rssMax), float64(r.s.psMedian())/float64(idle.psMedian()), mib(r.disk))
	}
	return nil
}

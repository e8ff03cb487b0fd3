// Command boot measures how long a VM takes from start to exit when booted
// through `kiln run`, against a hand-written minimal qemu-system-x86_64
// command line booting the same kernel, initrd and program (one that exits
// at once), and against `kiln run --unconfined` (QEMU without its jail,
// cgroup and seccomp sandbox). It prints the medians, the ratios and the
// guest's uptime when kiln-init started.
//
// With -memory it measures instead what an idle VM costs in memory and
// what the size of TCG's translation buffer does to that and to speed
// (memory.go). With -parallel N it times N `kiln run --rm` at once
// against one (parallel.go). With -template it measures, in one run, the
// time from `kiln run` to the program's first line on its stdout for a VM
// restored from a template (a daemon with KILN_TEMPLATES=1; the template
// made first, by a run not counted) against a cold boot of the same VM
// (`kiln run --cold`); with -image, of a full image VM (busybox). With
// -acpi it times a VM whose devices need ACPI against one whose do not
// (acpi.go).
// The other measures boot (`kiln run --cold`) unless they say otherwise.
//
//	go run ./bench/boot [-n 7] [-kiln bin/kiln] [-kernel PATH]
//	go run ./bench/boot -template [-image] [-n 7]   # restored from a template against a cold boot
//	go run ./bench/boot -parallel 8 [-template] [-n 5]   # 8 runs at once against one
//	go run ./bench/boot -acpi [-n 7]         # few volumes (no ACPI) against many (ACPI)
//	go run ./bench/boot -memory [-n 5] [-tb 0,16,32,64,128] [-settle 3s]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"kiln.dev/kiln/bench/internal/benchkit"
	"kiln.dev/kiln/internal/vmm"
	"kiln.dev/kiln/internal/vmm/qemu"
)

func main() {
	n := flag.Int("n", 7, "runs of each kind (at least 5)")
	kiln := flag.String("kiln", "bin/kiln", "the kiln binary")
	prog := flag.String("program", "bin/hello", "a static program that exits at once")
	kernel := flag.String("kernel", "", "guest kernel (default: the default root's default kernel)")
	memory := flag.Bool("memory", false, "measure an idle VM's memory and the translation buffer's size instead")
	tbList := flag.String("tb", "0,16,32,64,128", "with -memory: translation buffer sizes to compare, in MiB (0: QEMU's default)")
	tmpl := flag.Bool("template", false, "measure start to first line, restored from a template against a cold boot")
	parallel := flag.Int("parallel", 0, "time this many `kiln run --rm` at once against one instead (booted; restored from a template with -template)")
	image := flag.Bool("image", false, "with -template: run a busybox image (a full image VM) instead of the program")
	acpi := flag.Bool("acpi", false, "time a VM with few volumes (booted without ACPI) against one with many (booted with ACPI) instead")
	settle := flag.Duration("settle", 3*time.Second, "with -memory: how long an idle VM runs after its program started before its memory is read")
	flag.Parse()
	if *kernel == "" {
		*kernel = "/var/lib/kiln/kernels/default/vmlinux"
	}
	var err error
	switch {
	case *parallel > 0:
		err = runParallel(*n, *parallel, *kiln, *prog, *kernel, *tmpl)
	case *acpi:
		err = runACPI(*n, *kiln, *prog, *kernel)
	case *tmpl:
		err = runTemplate(*n, *kiln, *prog, *kernel, *image)
	case *memory:
		err = runMemory(*n, *tbList, *settle, *kiln, *prog, *kernel)
	default:
		err = run(*n, *kiln, *prog, *kernel)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/boot:", err)
		os.Exit(1)
	}
}

type sample struct {
	wall   time.Duration
	uptime float64       // guest uptime at kiln-init start, seconds
	cpu    time.Duration // the QEMU's user and system time (raw runs only)
}

func run(n int, kiln, prog, kernel string) error {
	if n < 5 {
		return fmt.Errorf("-n %d: use at least 5 runs", n)
	}
	root, err := os.MkdirTemp("", "kiln-bench-boot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	defer benchkit.StopDaemon(root)

	// One kiln run (kept) makes the initrd the raw runs boot: the same
	// kiln-init, spec and program.
	if _, err := kilnRun(kiln, root, kernel, prog, true, false); err != nil {
		return fmt.Errorf("preparing: %w", err)
	}
	vms, _ := filepath.Glob(filepath.Join(root, "vms", "*"))
	if len(vms) != 1 {
		return fmt.Errorf("preparing: want one VM directory, got %d", len(vms))
	}
	initrd := filepath.Join(root, "initrd")
	if err := os.Rename(filepath.Join(vms[0], "initrd"), initrd); err != nil {
		return err
	}
	os.RemoveAll(vms[0])

	// The guest command line kiln gives, and the same without
	// nolapic_timer: the kernel then calibrates its APIC timer at boot, as
	// it did before kiln turned that off under TCG.
	cmdline := kilnCmdline()
	calibrating := strings.Replace(cmdline, " nolapic_timer", "", 1)

	var kilnS, freeS, rawS, calS []sample
	for i := 0; i < n; i++ { // interleaved, so drift in host load hits all
		s, err := kilnRun(kiln, root, kernel, prog, false, false)
		if err != nil {
			return err
		}
		kilnS = append(kilnS, s)
		if s, err = kilnRun(kiln, root, kernel, prog, false, true); err != nil {
			return err
		}
		freeS = append(freeS, s)
		s, err = rawRun(root, kernel, initrd, "tcg", cmdline)
		if err != nil {
			return err
		}
		rawS = append(rawS, s)
		if s, err = rawRun(root, kernel, initrd, "tcg", calibrating); err != nil {
			return err
		}
		calS = append(calS, s)
	}
	km, fm, rm, cm := median(kilnS), median(freeS), median(rawS), median(calS)
	fmt.Printf("boot to exit, median of %d (program exits at once):\n", n)
	fmt.Printf("  raw, APIC timer calibrated: %4.0f ms  (guest uptime at kiln-init: %.2f s)\n", ms(cm.wall), cm.uptime)
	fmt.Printf("  raw qemu-system-x86_64:  %7.0f ms  (guest uptime at kiln-init: %.2f s)\n", ms(rm.wall), rm.uptime)
	fmt.Printf("  kiln run --unconfined:   %7.0f ms  (guest uptime at kiln-init: %.2f s)\n", ms(fm.wall), fm.uptime)
	fmt.Printf("  kiln run (jailed):       %7.0f ms  (guest uptime at kiln-init: %.2f s)\n", ms(km.wall), km.uptime)
	fmt.Printf("  ratio kiln/raw:          %7.3f  (goal <= 1.10)\n", float64(km.wall)/float64(rm.wall))
	fmt.Printf("  ratio jailed/unconfined: %7.3f  (goal <= 1.05)\n", float64(km.wall)/float64(fm.wall))
	if cm.uptime > 0 {
		fmt.Printf("  uptime at kiln-init, kiln's command line / APIC timer calibrated: %.3f\n", rm.uptime/cm.uptime)
	}
	return nil
}

// kilnRun times one `kiln run` and reads the guest's uptime from the VM's
// status file; the VM directory is removed unless keep.
func kilnRun(kiln, root, kernel, prog string, keep, unconfined bool) (sample, error) {
	args := []string{"--root", root, "run", "--cold", "--kernel", kernel}
	if unconfined {
		args = append(args, "--unconfined")
	}
	start := time.Now()
	cmd := exec.Command(kiln, append(args, prog)...)
	out, err := cmd.CombinedOutput()
	wall := time.Since(start)
	if err != nil {
		return sample{}, fmt.Errorf("kiln run: %w\n%s", err, out)
	}
	vms, _ := filepath.Glob(filepath.Join(root, "vms", "*"))
	var up float64
	for _, d := range vms {
		up = uptimeFrom(filepath.Join(d, "status.jsonl"))
		if !keep {
			os.RemoveAll(d)
		}
	}
	return sample{wall: wall, uptime: up}, nil
}

// rawRun boots the initrd with the minimal QEMU command line that runs it:
// the machine, the kernel and the three virtio-serial ports kiln-init writes
// (status, stdout, stderr), nothing else. The guest sees the same hardware
// and command line as under kiln (machine options, max_ports: QEMU's default
// of 31 ports makes the guest set up 64 virtqueues, which costs boot time
// under TCG), so the ratio measures kiln's own overhead on the host. accel
// is -accel's value, cmdline the guest kernel's command line.
func rawRun(root, kernel, initrd, accel, cmdline string) (sample, error) {
	dir, err := os.MkdirTemp(root, "raw-")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	cmd := exec.Command("qemu-system-x86_64", rawArgs(dir, kernel, initrd, accel, cmdline)...)
	out, err := cmd.CombinedOutput()
	wall := time.Since(start)
	if err != nil {
		return sample{}, fmt.Errorf("qemu: %w\n%s", err, out)
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return sample{wall, uptimeFrom(filepath.Join(dir, "status")), cpu}, nil
}

// rawArgs is rawRun's QEMU command line; the ports write to files in dir.
func rawArgs(dir, kernel, initrd, accel, cmdline string) []string {
	status := filepath.Join(dir, "status")
	return []string{
		"-M", "microvm,acpi=off,rtc=on,pit=on,pic=on,isa-serial=on", "-accel", accel, "-cpu", "max", "-m", "256M",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		// The same guest command line kiln gives, so that only the host side
		// differs.
		"-append", cmdline,
		// kiln's default network: a user-mode NIC, which kiln-init configures.
		"-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0",
		"-device", "virtio-serial-device,max_ports=5",
		"-chardev", "file,id=s,path=" + status, "-device", "virtserialport,chardev=s,name=kiln.exit",
		"-chardev", "file,id=o,path=" + filepath.Join(dir, "out"), "-device", "virtserialport,chardev=o,name=kiln.stdout",
		"-chardev", "file,id=e,path=" + filepath.Join(dir, "err"), "-device", "virtserialport,chardev=e,name=kiln.stderr",
	}
}

// kilnCmdline is the guest command line kiln gives its kernel under TCG.
func kilnCmdline() string { return qemu.Cmdline(vmm.AccelTCG, false, qemu.TSCKHz()) }

func uptimeFrom(path string) float64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r struct {
			Kind   string  `json:"kind"`
			Uptime float64 `json:"uptime"`
		}
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Kind == "started" {
			return r.Uptime
		}
	}
	return 0
}

func median(s []sample) sample {
	w := append([]sample{}, s...)
	sort.Slice(w, func(i, j int) bool { return w[i].wall < w[j].wall })
	u := append([]sample{}, s...)
	sort.Slice(u, func(i, j int) bool { return u[i].uptime < u[j].uptime })
	c := append([]sample{}, s...)
	sort.Slice(c, func(i, j int) bool { return c[i].cpu < c[j].cpu })
	return sample{w[len(w)/2].wall, u[len(u)/2].uptime, c[len(c)/2].cpu}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func tscKHz() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(f * 1000)
		}
	}
	return 0
}

// runTemplate measures start to first line: restored against cold.
func runTemplate(n int, kiln, prog, kernel string, image bool) error {
	if n < 5 {
		return fmt.Errorf("-n %d: use at least 5 runs", n)
	}
	if kernel == "" {
		kernel = "/var/lib/kiln/kernels/default/vmlinux"
	}
	root, err := os.MkdirTemp("", "kiln-bench-template-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	defer benchkit.StopDaemon(root)
	what := []string{prog}
	if image {
		ref, err := loadBusybox(kiln, root)
		if err != nil {
			return err
		}
		what = []string{"--pull", "never", ref, "/bin/busybox", "echo", "hello"}
	}
	// The daemon this starts has templates on; this run makes the template.
	if _, err := firstLineOf(kiln, root, kernel, what, false); err != nil {
		return fmt.Errorf("preparing: %w", err)
	}
	var cold, restored []sample
	for i := 0; i < n; i++ { // interleaved, so drift in host load hits both
		s, err := firstLineOf(kiln, root, kernel, what, true)
		if err != nil {
			return err
		}
		cold = append(cold, s)
		if s, err = firstLineOf(kiln, root, kernel, what, false); err != nil {
			return err
		}
		restored = append(restored, s)
	}
	cm, rm := median(cold), median(restored)
	fmt.Printf("start to the program's first line (%s), median of %d:\n", strings.Join(what, " "), n)
	fmt.Printf("  cold boot (kiln run --cold):   %7.0f ms\n", ms(cm.wall))
	fmt.Printf("  restored from a template:      %7.0f ms\n", ms(rm.wall))
	fmt.Printf("  ratio restored/cold:           %7.3f  (goal <= 0.30)\n", float64(rm.wall)/float64(cm.wall))
	return nil
}

// firstLineOf times one `kiln run` of what (a program or an image and
// its command) from its start to the first line of the program's stdout;
// the VM directory is removed after.
func firstLineOf(kiln, root, kernel string, what []string, cold bool) (sample, error) {
	args := []string{"--root", root, "run", "--kernel", kernel}
	if cold {
		args = append(args, "--cold")
	}
	cmd := exec.Command(kiln, append(args, what...)...)
	cmd.Env = append(os.Environ(), "KILN_TEMPLATES=1")
	var errb strings.Builder
	cmd.Stderr = &errb
	out, err := cmd.StdoutPipe()
	if err != nil {
		return sample{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return sample{}, err
	}
	r := bufio.NewReader(out)
	_, lerr := r.ReadString('\n')
	wall := time.Since(start)
	_, _ = r.WriteTo(io.Discard)
	if err := cmd.Wait(); err != nil || lerr != nil {
		return sample{}, fmt.Errorf("kiln run: %v %v\n%s", err, lerr, errb.String())
	}
	vms, _ := filepath.Glob(filepath.Join(root, "vms", "*"))
	for _, d := range vms {
		os.RemoveAll(d)
	}
	return sample{wall: wall}, nil
}

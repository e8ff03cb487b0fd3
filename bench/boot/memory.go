package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"kiln.dev/kiln/bench/internal/benchkit"
)

// runMemory is -memory: what an idle VM costs in memory under TCG, and
// what the size of TCG's translation buffer (-accel tcg,tb-size=N) does to
// that and to speed, in one run:
//
//   - kiln: the PSS of the QEMU of one `kiln run -d` VM whose program
//     sleeps, with whatever tb-size kiln gives it (read from its command
//     line);
//   - raw: the PSS of the hand-written QEMU of rawRun booting the same
//     kernel and initrd, for QEMU's own default and each size of tbList;
//   - for each size, the median boot-to-exit time of a program that exits
//     at once (boot) and of one that then allocates and touches 64 MiB and
//     prints 20,000 lines (run), raw QEMU, runs interleaved: wall time,
//     and the QEMU's CPU time (user and system), which a busy host
//     disturbs far less.
//
// Memory is read from /proc/PID/smaps once the program has started and
// settle has passed: the PSS, which counts pages shared with other
// processes (the kernel and initrd files, QEMU's binary) in part and so
// moves with what else runs; the RSS; and the PSS of the translation
// buffer alone (QEMU's one anonymous rwx mapping), which is TCG's own.
func runMemory(n int, tbList string, settle time.Duration, kiln, prog, kernel string) error {
	if n < 3 {
		return fmt.Errorf("-n %d: use at least 3 runs with -memory", n)
	}
	var tbs []int
	for _, f := range strings.Split(tbList, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 0 {
			return fmt.Errorf("-tb %q: want sizes in MiB", tbList)
		}
		tbs = append(tbs, v)
	}
	root, err := os.MkdirTemp("", "kiln-bench-memory-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	defer benchkit.StopDaemon(root)
	k := func(args ...string) ([]byte, error) {
		out, err := exec.Command(kiln, append([]string{"--root", root}, args...)...).CombinedOutput()
		if err != nil {
			return out, fmt.Errorf("kiln %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return out, nil
	}
	defer k("rm", "-f", "idle", "idle-restored")

	// The initrds the raw runs boot: the same kiln-init, with a spec for
	// each program, taken from VMs kiln made.
	initrds := map[string]string{}
	for _, w := range []struct {
		name string
		args []string
	}{{"boot", nil}, {"run", []string{"-alloc-mb", "64", "-lines", "20000"}}} {
		if _, err := k(append([]string{"run", "--cold", "--name", w.name, "--kernel", kernel, prog}, w.args...)...); err != nil {
			return err
		}
		if initrds[w.name], err = keepInitrd(root, k, w.name); err != nil {
			return err
		}
		if _, err := k("rm", w.name); err != nil {
			return err
		}
	}

	// kiln's idle VMs: one booted, one restored from a template (made
	// by a first run of the same VM, not measured).
	idle := func(name string, cold bool) (mem, int, error) {
		args := []string{"run", "-d", "--name", name, "--kernel", kernel}
		if cold {
			args = append(args, "--cold")
		}
		if _, err := k(append(args, prog, "-sleep", "1h")...); err != nil {
			return mem{}, 0, err
		}
		dir, err := vmDir(root, k, name)
		if err != nil {
			return mem{}, 0, err
		}
		if err := waitStarted(filepath.Join(dir, "status.jsonl"), time.Minute); err != nil {
			return mem{}, 0, fmt.Errorf("kiln's idle VM %s: %w", name, err)
		}
		if cold {
			if initrds["idle"], err = keepInitrd(root, k, name); err != nil {
				return mem{}, 0, err
			}
		}
		time.Sleep(settle)
		pidb, err := os.ReadFile(filepath.Join(dir, "qemu.pid"))
		if err != nil {
			return mem{}, 0, err
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
		tb := tbSizeOf(pid)
		m, err := memOf(pid)
		if err != nil {
			return mem{}, 0, fmt.Errorf("kiln's QEMU: %w", err)
		}
		_, err = k("rm", "-f", name)
		return m, tb, err
	}
	kilnMem, kilnTB, err := idle("idle", true)
	if err != nil {
		return err
	}
	if _, err := k("run", "--rm", "--kernel", kernel, prog); err != nil { // makes the template
		return err
	}
	restoredMem, _, err := idle("idle-restored", false)
	if err != nil {
		return err
	}

	type result struct {
		mem       mem
		boot, run []sample
	}
	res := make([]result, len(tbs))
	for i, tb := range tbs {
		if res[i].mem, err = rawIdle(root, kernel, initrds["idle"], accelOf(tb), settle); err != nil {
			return fmt.Errorf("raw idle VM (%s): %w", tbName(tb), err)
		}
	}
	for j := 0; j < n; j++ { // interleaved, so drift in host load hits all
		for i, tb := range tbs {
			s, err := rawRun(root, kernel, initrds["boot"], accelOf(tb), kilnCmdline())
			if err != nil {
				return err
			}
			res[i].boot = append(res[i].boot, s)
			if s, err = rawRun(root, kernel, initrds["run"], accelOf(tb), kilnCmdline()); err != nil {
				return err
			}
			res[i].run = append(res[i].run, s)
		}
	}

	fmt.Printf("idle VM (hello -sleep 1h): its QEMU's memory %s after the program started (PSS, RSS, the translation buffer's PSS);\n", settle)
	fmt.Printf("boot = start to exit of hello, run = of hello -alloc-mb 64 -lines 20000: wall (QEMU's CPU) time, medians of %d\n", n)
	fmt.Printf("  %-38s %8s %8s %8s %18s %18s\n", "", "PSS", "RSS", "buffer", "boot", "run")
	fmt.Printf("  %-38s %7.1fM %7.1fM %7.1fM\n", "kiln run -d --cold ("+tbName(kilnTB)+")", kilnMem.pss, kilnMem.rss, kilnMem.tb)
	fmt.Printf("  %-38s %7.1fM %7.1fM %7.1fM\n", "kiln run -d, restored", restoredMem.pss, restoredMem.rss, restoredMem.tb)
	for i, tb := range tbs {
		b, r, m := median(res[i].boot), median(res[i].run), res[i].mem
		fmt.Printf("  %-38s %7.1fM %7.1fM %7.1fM %7.0fms (%5.0fms) %7.0fms (%5.0fms)\n", "raw qemu ("+tbName(tb)+")", m.pss, m.rss, m.tb, ms(b.wall), ms(b.cpu), ms(r.wall), ms(r.cpu))
	}
	for i, tb := range tbs {
		if tb == kilnTB {
			fmt.Printf("  kiln/raw at the same tb-size: PSS %.2f, RSS %.2f\n", kilnMem.pss/res[i].mem.pss, kilnMem.rss/res[i].mem.rss)
		}
	}
	fmt.Printf("  restored/booted: PSS %.2f, RSS %.2f\n", restoredMem.pss/kilnMem.pss, restoredMem.rss/kilnMem.rss)
	return nil
}

func accelOf(tbMiB int) string {
	if tbMiB == 0 {
		return "tcg"
	}
	return "tcg,tb-size=" + strconv.Itoa(tbMiB)
}

func tbName(mib int) string {
	if mib == 0 {
		return "QEMU's default tb-size"
	}
	return fmt.Sprintf("tb-size=%d", mib)
}

// vmDir finds the directory of the VM name.
func vmDir(root string, k func(...string) ([]byte, error), name string) (string, error) {
	out, err := k("inspect", "--format", "{{.ID}}", name)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(out))
	if id == "" {
		return "", fmt.Errorf("kiln inspect %s: no ID", name)
	}
	return filepath.Join(root, "vms", id), nil
}

// keepInitrd copies the initrd of the VM name beside root's VMs.
func keepInitrd(root string, k func(...string) ([]byte, error), name string) (string, error) {
	dir, err := vmDir(root, k, name)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(dir, "initrd"))
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, "initrd-"+name)
	return p, os.WriteFile(p, b, 0o644)
}

var reTB = regexp.MustCompile(`tb-size=(\d+)`)

// tbSizeOf reads the tb-size on a QEMU's command line (0: none given).
func tbSizeOf(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if m := reTB.FindSubmatch(b); m != nil {
		v, _ := strconv.Atoi(string(m[1]))
		return v
	}
	return 0
}

// rawIdle boots the sleeping program with rawArgs and reads its QEMU's
// memory once it has started and settle has passed.
func rawIdle(root, kernel, initrd, accel string, settle time.Duration) (mem, error) {
	dir, err := os.MkdirTemp(root, "idle-")
	if err != nil {
		return mem{}, err
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command("qemu-system-x86_64", rawArgs(dir, kernel, initrd, accel, kilnCmdline())...)
	if err := cmd.Start(); err != nil {
		return mem{}, err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}()
	if err := waitStarted(filepath.Join(dir, "status"), time.Minute); err != nil {
		return mem{}, err
	}
	time.Sleep(settle)
	return memOf(cmd.Process.Pid)
}

// waitStarted waits for kiln-init's "started" record in a status file.
func waitStarted(path string, timeout time.Duration) error {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var r struct {
				Kind string `json:"kind"`
			}
			if json.Unmarshal(sc.Bytes(), &r) == nil && r.Kind == "started" {
				f.Close()
				return nil
			}
		}
		f.Close()
	}
	return errors.New("the program did not start in time")
}

// mem is what a QEMU holds, in MiB.
type mem struct {
	pss, rss float64
	tb       float64 // the translation buffer's PSS
}

// memOf reads a process's memory from its smaps: the totals, and the PSS
// of its anonymous rwx mapping, which in QEMU under TCG is the
// translation buffer.
func memOf(pid int) (mem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return mem{}, err
	}
	var m mem
	inTB := false
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			// A mapping's first line: range, perms, offset, dev, inode[, path].
			inTB = f[1] == "rwxp" && f[4] == "0" && len(f) == 5
		case len(f) >= 2 && (f[0] == "Pss:" || f[0] == "Rss:"):
			v, _ := strconv.ParseFloat(f[1], 64)
			v /= 1024
			if f[0] == "Rss:" {
				m.rss += v
				continue
			}
			m.pss += v
			if inTB {
				m.tb += v
			}
		}
	}
	if m.rss == 0 {
		return mem{}, fmt.Errorf("no memory in the smaps of %d", pid)
	}
	return m, nil
}

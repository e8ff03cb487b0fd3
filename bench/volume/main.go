// Command volume measures sequential write and read throughput of a file
// on a named volume (a virtio-blk disk image) and on a host directory
// shared over 9p, each from inside a VM, against the same file written and
// read on the host directly, in the same process. It prints MB/s and the
// ratios to the host.
//
// The program is also what runs in the guest (-guest): built statically,
// it is the VM's program. Each write is fsynced; before each read the
// file's pages are dropped from the host's page cache (and the guest's is
// cold: a read runs in a new VM), so reads come from the disk.
//
//	CGO_ENABLED=0 go run ./bench/volume [-mib 256] [-kiln bin/kiln] [-kernel PATH]
package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"kiln.dev/kiln/bench/internal/benchkit"

	"golang.org/x/sys/unix"
)

func main() {
	mib := flag.Int("mib", 256, "size of the file written and read, MiB")
	kiln := flag.String("kiln", "bin/kiln", "the kiln binary")
	kernel := flag.String("kernel", "", "guest kernel (default: the default root's default kernel)")
	guest := flag.String("guest", "", "(in the guest) write or read this file and print the throughput")
	op := flag.String("op", "", "(in the guest) write or read")
	readAhead := flag.Int("readahead", 0, "(in the guest) before a read, set the read-ahead of the file's disk to this many KiB")
	flag.Parse()
	if *guest != "" {
		if *readAhead > 0 {
			if err := setReadAhead(filepath.Dir(*guest), *readAhead); err != nil {
				fmt.Println("ERROR", err)
				os.Exit(1)
			}
		}
		mbps, err := transfer(*op, *guest, *mib)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Printf("RESULT %s %.1f\n", *op, mbps)
		return
	}
	if err := run(*mib, *kiln, *kernel); err != nil {
		fmt.Fprintln(os.Stderr, "bench/volume:", err)
		os.Exit(1)
	}
}

// transfer writes (fsynced) or reads the file of mib MiB and returns MB/s.
func transfer(op, path string, mib int) (float64, error) {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	start := time.Now()
	switch op {
	case "write":
		f, err := os.Create(path)
		if err != nil {
			return 0, err
		}
		for i := 0; i < mib; i++ {
			if _, err := f.Write(buf); err != nil {
				f.Close()
				return 0, err
			}
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return 0, err
		}
		if err := f.Close(); err != nil {
			return 0, err
		}
	case "read":
		f, err := os.Open(path)
		if err != nil {
			return 0, err
		}
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
		f.Close()
		if err != nil {
			return 0, err
		}
		if n != int64(mib)<<20 {
			return 0, fmt.Errorf("read %d bytes, want %d", n, int64(mib)<<20)
		}
	default:
		return 0, fmt.Errorf("-op %q: use write or read", op)
	}
	return float64(mib) * (1 << 20) / 1e6 / time.Since(start).Seconds(), nil
}

// setReadAhead sets the read-ahead of the disk holding dir, in the guest.
func setReadAhead(dir string, kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	f := fmt.Sprintf("/sys/dev/block/%d:%d/queue/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(f, []byte(strconv.Itoa(kb)), 0)
}

// dropCache drops the file's pages from the host's page cache.
func dropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

type result struct{ write, read float64 }

func run(mib int, kiln, kernel string) error {
	if kernel == "" {
		kernel = "/var/lib/kiln/kernels/default/vmlinux"
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := checkStatic(self); err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "kiln-bench-volume-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	defer benchkit.StopDaemon(root)
	kilnCmd := func(args ...string) ([]byte, error) {
		cmd := exec.Command(kiln, append([]string{"--root", root}, args...)...)
		return cmd.CombinedOutput()
	}
	volSize := strconv.Itoa(mib*2+64) + "m"
	if out, err := kilnCmd("volume", "create", "--size", volSize, "bench"); err != nil {
		return fmt.Errorf("volume create: %w\n%s", err, out)
	}
	shared := filepath.Join(root, "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		return err
	}

	// The host: the same program, the same file size, in this process.
	hostFile := filepath.Join(root, "host.dat")
	var host result
	if host.write, err = transfer("write", hostFile, mib); err != nil {
		return err
	}
	if err := dropCache(hostFile); err != nil {
		return err
	}
	if host.read, err = transfer("read", hostFile, mib); err != nil {
		return err
	}
	os.Remove(hostFile)

	inVM := func(mount, file, backing string, unconfined bool, readAhead int) (result, error) {
		var r result
		for _, op := range []string{"write", "read"} {
			args := []string{"run", "--rm", "--kernel", kernel, "--network", "none", "--memory", "512m", "-v", mount}
			if unconfined {
				args = append(args, "--unconfined")
			}
			args = append(args, self, "-guest", file, "-op", op, "-mib", strconv.Itoa(mib))
			if op == "read" && readAhead > 0 {
				args = append(args, "-readahead", strconv.Itoa(readAhead))
			}
			out, err := kilnCmd(args...)
			if err != nil {
				return r, fmt.Errorf("kiln run (%s %s): %w\n%s", op, mount, err, out)
			}
			v, err := parseResult(out, op)
			if err != nil {
				return r, err
			}
			if op == "write" {
				r.write = v
				// Cold for the read: the next VM's page cache is empty,
				// and the host's is dropped here.
				if err := dropCache(backing); err != nil {
					return r, err
				}
			} else {
				r.read = v
			}
		}
		return r, nil
	}
	disk := filepath.Join(root, "volumes", "bench", "disk.ext4")
	vol, err := inVM("bench:/vol", "/vol/bench.dat", disk, false, 0)
	if err != nil {
		return err
	}
	// The kernel's default read-ahead, 128 KiB, where kiln-init sets
	// 4 MiB: what the larger requests are worth under TCG.
	volRA, err := inVM("bench:/vol", "/vol/bench.dat", disk, false, 128)
	if err != nil {
		return err
	}
	volFree, err := inVM("bench:/vol", "/vol/bench.dat", disk, true, 0)
	if err != nil {
		return err
	}
	ninep, err := inVM(shared+":/shared", "/shared/bench.dat", filepath.Join(shared, "bench.dat"), false, 0)
	if err != nil {
		return err
	}
	// Unconfined: QEMU as root, 9p's security_model=none, no id-mapped
	// mount: what host directories cost before the jail.
	ninepFree, err := inVM(shared+":/shared", "/shared/bench.dat", filepath.Join(shared, "bench.dat"), true, 0)
	if err != nil {
		return err
	}
	if out, err := kilnCmd("volume", "rm", "bench"); err != nil {
		return fmt.Errorf("volume rm: %w\n%s", err, out)
	}

	fmt.Printf("sequential throughput of a %d MiB file (write fsynced; read cold), MB/s:\n", mib)
	fmt.Printf("  %-28s %9s %9s\n", "", "write", "read")
	fmt.Printf("  %-28s %9.1f %9.1f\n", "host file (baseline)", host.write, host.read)
	fmt.Printf("  %-28s %9.1f %9.1f\n", "named volume (virtio-blk)", vol.write, vol.read)
	fmt.Printf("  %-28s %9.1f %9.1f\n", "named volume, read-ahead 128K", volRA.write, volRA.read)
	fmt.Printf("  %-28s %9.1f %9.1f\n", "named volume, --unconfined", volFree.write, volFree.read)
	fmt.Printf("  %-28s %9.1f %9.1f\n", "host directory (9p)", ninep.write, ninep.read)
	fmt.Printf("  %-28s %9.1f %9.1f\n", "host directory, --unconfined", ninepFree.write, ninepFree.read)
	fmt.Printf("  ratio volume/host:          %9.3f %9.3f\n", vol.write/host.write, vol.read/host.read)
	fmt.Printf("  ratio volume/read-ahead 128K:         %9.3f\n", vol.read/volRA.read)
	fmt.Printf("  ratio 9p/host:              %9.3f %9.3f\n", ninep.write/host.write, ninep.read/host.read)
	fmt.Printf("  ratio volume jailed/unconf: %9.3f %9.3f\n", vol.write/volFree.write, vol.read/volFree.read)
	fmt.Printf("  ratio 9p jailed/unconf:     %9.3f %9.3f\n", ninep.write/ninepFree.write, ninep.read/ninepFree.read)
	return nil
}

func parseResult(out []byte, op string) (float64, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "RESULT" && f[1] == op {
			return strconv.ParseFloat(f[2], 64)
		}
	}
	return 0, fmt.Errorf("no %s result in the guest's output:\n%s", op, out)
}

// checkStatic refuses a dynamically linked build: the guest has no
// libraries.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; build it with CGO_ENABLED=0 (it is also the guest's program)", p)
		}
	}
	return nil
}

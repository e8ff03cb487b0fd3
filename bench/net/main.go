// Command net measures a service behind a published port, on QEMU user-mode
// networking and on a bridge network (TAP, nftables DNAT), against the same
// server run directly on the host, inside a network namespace it creates
// and removes: request latency (median of -n sequential GETs on one
// kept-alive connection) and download throughput (-size MiB, best of -r),
// and prints the ratios.
//
//	go run ./bench/net [-n 200] [-size 64] [-r 3]
//
// It needs root (ip netns), QEMU and a guest kernel; the VM runs
// examples/httpd under a kiln root of its own. Traffic goes only to
// 127.0.0.1 inside the namespace: the client is this program re-executed
// there with -client.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// result is what the client measures against one URL.
type result struct {
	Median time.Duration `json:"median"`
	MBps   float64       `json:"mbps"`
}

func main() {
	n := flag.Int("n", 200, "sequential GETs for the latency")
	size := flag.Int("size", 64, "MiB to download for the throughput")
	reps := flag.Int("r", 3, "downloads (the best counts)")
	kiln := flag.String("kiln", "bin/kiln", "the kiln binary")
	httpd := flag.String("httpd", "bin/httpd", "examples/httpd, static")
	kernel := flag.String("kernel", "/var/lib/kiln/kernels/default/vmlinux", "guest kernel")
	client := flag.String("client", "", "(internal) measure this base URL and print JSON")
	flag.Parse()
	var err error
	if *client != "" {
		var r result
		if r, err = measure(*client, *n, *size, *reps); err == nil {
			err = json.NewEncoder(os.Stdout).Encode(r)
		}
	} else {
		err = run(*n, *size, *reps, *kiln, *httpd, *kernel)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/net:", err)
		os.Exit(1)
	}
}

func run(n, size, reps int, kiln, httpd, kernel string) (err error) {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root for ip netns")
	}
	ns := fmt.Sprintf("kiln-bench-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %w: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up: %w: %s", err, out)
	}
	root, err := os.MkdirTemp("", "kiln-bench-net-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	inNS := func(args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	}
	k := func(args ...string) (string, error) {
		// nsenter rather than ip netns exec, which also gives the daemon a
		// /sys of its own without cgroups, where it cannot jail VMs.
		cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns, kiln, "--root", root}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("kiln %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	defer func() {
		k("rm", "-f", "bench-httpd", "bench-bridge", "bench-free")
		k("network", "rm", "bench")
		if b, err := os.ReadFile(filepath.Join(root, "run", "kiln.pid")); err == nil {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()

	// The baseline: the same server on the host side of the namespace.
	host := inNS(httpd, "-addr", "127.0.0.1:18090")
	if err := host.Start(); err != nil {
		return err
	}
	defer func() { host.Process.Signal(syscall.SIGTERM); host.Wait() }()

	if _, err := k("run", "-d", "--name", "bench-httpd", "--kernel", kernel, "--memory", "256m", "-p", "127.0.0.1:18080:80", httpd); err != nil {
		return err
	}
	// The same VM without its jail, cgroup and seccomp filter.
	if _, err := k("run", "-d", "--name", "bench-free", "--unconfined", "--kernel", kernel, "--memory", "256m", "-p", "127.0.0.1:18082:80", httpd); err != nil {
		return err
	}
	if _, err := k("network", "create", "bench", "--subnet", "10.88.0.0/24"); err != nil {
		return err
	}
	if _, err := k("run", "-d", "--name", "bench-bridge", "--network", "bench", "--kernel", kernel, "--memory", "256m", "-p", "127.0.0.1:18081:80", httpd); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	measureIn := func(url string) (result, error) {
		var r result
		out, err := inNS(self, "-client", url, "-n", strconv.Itoa(n), "-size", strconv.Itoa(size), "-r", strconv.Itoa(reps)).Output()
		if err != nil {
			return r, fmt.Errorf("client %s: %w", url, err)
		}
		return r, json.Unmarshal(out, &r)
	}
	// Every VM up before any is measured: one still booting would take
	// the CPU from the one being measured.
	for _, port := range []string{"18080", "18081", "18082"} {
		if _, err := inNS(self, "-client", "http://127.0.0.1:"+port, "-n", "1", "-size", "1", "-r", "1").Output(); err != nil {
			return fmt.Errorf("waiting for the VM on port %s: %w", port, err)
		}
	}
	base, err := measureIn("http://127.0.0.1:18090")
	if err != nil {
		return err
	}
	vm, err := measureIn("http://127.0.0.1:18080")
	if err != nil {
		return err
	}
	br, err := measureIn("http://127.0.0.1:18081")
	if err != nil {
		return err
	}
	free, err := measureIn("http://127.0.0.1:18082")
	if err != nil {
		return err
	}
	fmt.Printf("network namespace %s, %d GETs, %d MiB download (best of %d)\n", ns, n, size, reps)
	fmt.Printf("%-34s %14s %12s\n", "", "GET median", "download")
	fmt.Printf("%-34s %14s %9.1f MB/s\n", "host process (baseline)", base.Median.Round(time.Microsecond), base.MBps)
	fmt.Printf("%-34s %14s %9.1f MB/s\n", "VM, user-mode published port", vm.Median.Round(time.Microsecond), vm.MBps)
	fmt.Printf("%-34s %14s %9.1f MB/s\n", "VM, bridge network published port", br.Median.Round(time.Microsecond), br.MBps)
	fmt.Printf("%-34s %14s %9.1f MB/s\n", "VM, user-mode, --unconfined", free.Median.Round(time.Microsecond), free.MBps)
	fmt.Printf("ratio user-mode VM/host: latency x%.1f, throughput x%.3f\n", float64(vm.Median)/float64(base.Median), vm.MBps/base.MBps)
	fmt.Printf("ratio bridge VM/host:    latency x%.1f, throughput x%.3f\n", float64(br.Median)/float64(base.Median), br.MBps/base.MBps)
	fmt.Printf("ratio bridge/user-mode:  latency x%.2f, throughput x%.2f\n", float64(br.Median)/float64(vm.Median), br.MBps/vm.MBps)
	fmt.Printf("ratio jailed/unconfined (user-mode): latency x%.2f, throughput x%.2f\n", float64(vm.Median)/float64(free.Median), vm.MBps/free.MBps)
	return nil
}

// measure runs in the namespace: it waits for the server, then times GETs
// of / on one kept-alive connection and downloads of /zero.
func measure(base string, n, size, reps int) (result, error) {
	var r result
	c := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	get := func(path string) (int64, error) {
		resp, err := c.Get(base + path)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		k, err := io.Copy(io.Discard, resp.Body)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return k, err
	}
	// Ready: QEMU accepts on the forward before the guest listens, so a
	// GET is retried until one succeeds.
	var err error
	for i := 0; i < 240; i++ {
		if _, err = get("/"); err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return r, fmt.Errorf("server at %s never answered: %w", base, err)
	}
	for range 10 { // warm up
		if _, err := get("/"); err != nil {
			return r, err
		}
	}
	lat := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if _, err := get("/"); err != nil {
			return r, err
		}
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	r.Median = lat[len(lat)/2]
	bytes := int64(size) << 20
	for range reps {
		t := time.Now()
		k, err := get("/zero?bytes=" + strconv.FormatInt(bytes, 10))
		if err != nil {
			return r, err
		}
		if k != bytes {
			return r, fmt.Errorf("downloaded %d bytes of %d", k, bytes)
		}
		r.MBps = max(r.MBps, float64(bytes)/1e6/time.Since(t).Seconds())
	}
	return r, nil
}

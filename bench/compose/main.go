// Command compose measures what `kiln compose` costs over making the same
// VMs by hand: a two-service project, db (httpd serving a file from a named
// volume, a health check) and web (httpd on a published port, a health
// check, depends_on db being healthy), on a bridge network, brought up
// with `kiln compose up -d` and timed from the command's start to both VMs
// healthy, against `kiln run -d` of db, a wait for it to be healthy, then
// `kiln run -d` of web and a wait for it, alternating, in one run. Teardown
// (compose down -v; rm, volume rm) is not timed, nor is the by-hand
// network's create (compose's up makes its network inside the timed part),
// nor a GET of web's page through its published port after each, which
// checks that both ways made the same service. The first of each way is
// not counted: it builds the image's root filesystem and the template
// later VMs restore from. It prints each run's times, the medians and
// their ratio (expected near 1.0: compose adds its file's loading and
// makes the same API calls).
//
//	make build && go run ./bench/compose [-n 5] [-bin bin] [-kernel PATH]
//
// It needs root: bridge networks live in a network namespace it creates
// and removes, where the daemon of a temporary kiln root runs; the CLI
// reaches that daemon over its unix socket. The image is a small busybox
// one built here and loaded with `kiln load`; both services boot -kernel
// (x-kiln: kernel: in the file, --kernel by hand). Nothing is left behind:
// after the runs it checks that no VM, network or volume remains, then
// stops the daemon and removes the namespace and the root, on error too.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"kiln.dev/kiln/bench/internal/benchkit"
)

const (
	// imageRef is what the benchmark's image is loaded as.
	imageRef = "kiln-bench/busybox:compose"
	// project is the compose project's name; its VMs are bc-db-1 and
	// bc-web-1.
	project = "bc"
	// webPort is web's published port, on 127.0.0.1 in the namespace.
	webPort = "18195"
	// Each service's command and health check, the same in the file and
	// by hand.
	dbCmd       = "echo s3cret > /data/pw && exec httpd -f -p 6379 -h /data"
	dbHealth    = "wget -qO- http://127.0.0.1:6379/pw"
	webHealth   = "wget -qO- http://127.0.0.1/"
	webIndex    = "hello from kiln compose\n"
	healthEvery = "1s"
	// waitLimit bounds each wait for a VM to become healthy.
	waitLimit = 3 * time.Minute
)

// composeFile is the project; %s is the guest kernel.
const composeFile = `x-vm: &vm
  kernel: %s
services:
  db:
    image: ` + imageRef + `
    command: ["sh", "-c", "` + dbCmd + `"]
    volumes: ["data:/data"]
    healthcheck: {test: ["CMD-SHELL", "` + dbHealth + `"], interval: ` + healthEvery + `}
    x-kiln: *vm
  web:
    image: ` + imageRef + `
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    ports: ["127.0.0.1:` + webPort + `:80"]
    depends_on:
      db: {condition: service_healthy}
    healthcheck: {test: ["CMD-SHELL", "` + webHealth + `"], interval: ` + healthEvery + `}
    x-kiln: *vm
volumes:
  data: {}
`

func main() {
	n := flag.Int("n", 5, "runs of each")
	bin := flag.String("bin", "bin", "the directory of kiln and kiln-init (make build)")
	kernel := flag.String("kernel", "/var/lib/kiln/kernels/default/vmlinux", "guest kernel of both services")
	get := flag.String("get", "", "(internal) print the body of a GET of this URL")
	flag.Parse()
	if *get != "" {
		if err := fetch(*get); err != nil {
			fmt.Fprintln(os.Stderr, "bench/compose:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *n, *bin, *kernel)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/compose:", err)
		os.Exit(1)
	}
}

// bench is what every step uses: the kiln binary, its root, the namespace
// its daemon runs in, the compose file and the guest kernel.
type bench struct {
	ctx    context.Context
	kiln   string
	root   string
	ns     string
	file   string
	kernel string
	env    []string
}

func run(ctx context.Context, n int, bin, kernel string) (err error) {
	if n < 1 {
		return fmt.Errorf("-n %d: want at least one run", n)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: bridge networks, in a network namespace of its own (ip netns); run it with sudo")
	}
	bin, err = filepath.Abs(bin)
	if err != nil {
		return err
	}
	if kernel, err = filepath.Abs(kernel); err != nil {
		return err
	}
	if _, err := os.Stat(kernel); err != nil {
		return fmt.Errorf("guest kernel: %w", err)
	}
	kiln := filepath.Join(bin, "kiln")
	if _, err := os.Stat(kiln); err != nil {
		return fmt.Errorf("%w (make build)", err)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return fmt.Errorf("%w: run scripts/setup (apt-get install busybox-static)", err)
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return err
	}

	// The namespace, named as kiln's tests name theirs so that a sweep of
	// stray ones recognises it.
	rnd := make([]byte, 4)
	rand.Read(rnd)
	ns := "kiln-test-cbench-" + hex.EncodeToString(rnd)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", ns, err, out)
	}
	// Deferred first, so it runs last: the daemon and its VMs are gone
	// when the namespace is removed.
	defer func() {
		if out, derr := exec.Command("ip", "netns", "del", ns).CombinedOutput(); derr != nil {
			err = errors.Join(err, fmt.Errorf("ip netns del %s: %w: %s", ns, derr, out))
		}
	}()
	if out, err := exec.Command("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up in %s: %w: %s", ns, err, out)
	}
	tmp, err := os.MkdirTemp("", "kiln-bench-compose-")
	if err != nil {
		return err
	}
	defer func() {
		if rerr := os.RemoveAll(tmp); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	b := &bench{ctx: ctx, kiln: kiln, root: filepath.Join(tmp, "kiln"), ns: ns, file: filepath.Join(tmp, "compose.yaml"), kernel: kernel}
	// The caller's KILN_* settings would point the CLI elsewhere, its
	// COMPOSE_* ones change the project.
	b.env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "KILN_") || strings.HasPrefix(kv, "COMPOSE_")
	})
	b.env = append(b.env, "PATH="+bin+":"+os.Getenv("PATH"))
	defer benchkit.StopDaemon(b.root)
	// Whatever a failed run left, removed while the daemon still runs.
	defer b.removeAll()

	// The daemon starts on demand, where its first command runs: in the
	// namespace. nsenter rather than ip netns exec, which would also give
	// it a /sys of its own without cgroups, where it cannot jail VMs.
	if _, err := b.cmd([]string{nsenter, "--net=/run/netns/" + ns, kiln, "--root", b.root, "ps"}); err != nil {
		return fmt.Errorf("starting the daemon in %s: %w", ns, err)
	}
	// Every later command runs on the host side and must find that daemon:
	// one it started would be in the host's namespace.
	b.env = append(b.env, "KILN_NO_AUTOSTART=1")
	if err := b.daemonInNetns(); err != nil {
		return err
	}
	oci := filepath.Join(tmp, "oci")
	if err := benchkit.WriteBusyboxImage(oci, imageRef, []string{"sh", "httpd", "wget", "echo"}, map[string]string{"www/index.html": webIndex}); err != nil {
		return err
	}
	if _, err := b.k("load", "oci:"+oci); err != nil {
		return err
	}
	if err := os.WriteFile(b.file, []byte(fmt.Sprintf(composeFile, kernel)), 0o644); err != nil {
		return err
	}

	// Not counted: the first of each builds what later runs reuse (the
	// image's root filesystem, the template VMs restore from).
	if _, err := b.viaCompose(); err != nil {
		return err
	}
	if _, err := b.byHand(); err != nil {
		return err
	}
	var cs, hs []time.Duration
	fmt.Printf("start to both VMs healthy, db then web (depends_on db healthy), on a bridge network, %d runs each, alternating:\n", n)
	fmt.Printf("  run   compose up -d   by hand (run, wait, run, wait)\n")
	for i := 1; i <= n; i++ { // alternating, so drift in the host's load hits both
		c, err := b.viaCompose()
		if err != nil {
			return err
		}
		h, err := b.byHand()
		if err != nil {
			return err
		}
		cs, hs = append(cs, c), append(hs, h)
		fmt.Printf("  %3d   %10d ms   %10d ms\n", i, c.Milliseconds(), h.Milliseconds())
	}
	for _, what := range [][]string{{"ps", "-a", "-q"}, {"network", "ls", "-q"}, {"volume", "ls", "-q"}} {
		out, err := b.k(what...)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("after the runs, kiln %s lists %q", strings.Join(what, " "), out)
		}
	}
	c, h := benchkit.Median(cs), benchkit.Median(hs)
	fmt.Printf("median of %d:\n", n)
	fmt.Printf("  kiln compose up -d:            %6d ms\n", c.Milliseconds())
	fmt.Printf("  kiln run -d by hand:           %6d ms\n", h.Milliseconds())
	fmt.Printf("  ratio compose/by hand:         %.3f (expected near 1.0)\n", float64(c)/float64(h))
	return nil
}

// viaCompose brings the project up and returns the time from up's start
// to both VMs healthy; then it takes the project down, volume and all.
func (b *bench) viaCompose() (time.Duration, error) {
	start := time.Now()
	if _, err := b.compose("up", "-d"); err != nil {
		return 0, err
	}
	if err := b.waitHealthy(project+"-db-1", project+"-web-1"); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if err := b.checkWeb(); err != nil {
		return 0, err
	}
	if _, err := b.compose("down", "-v"); err != nil {
		return 0, err
	}
	return took, nil
}

// byHand makes the project's VMs with kiln run on a network made
// beforehand and returns the time from the first run's start to web
// healthy; then it removes the VMs, the volume and the network.
func (b *bench) byHand() (time.Duration, error) {
	if _, err := b.k("network", "create", "bcnet"); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := b.k("run", "-d", "--name", "db", "--network", "bcnet", "--kernel", b.kernel, "-v", "bcdata:/data",
		"--health-cmd", dbHealth, "--health-interval", healthEvery, imageRef, "sh", "-c", dbCmd); err != nil {
		return 0, err
	}
	if err := b.waitHealthy("db"); err != nil {
		return 0, err
	}
	if _, err := b.k("run", "-d", "--name", "web", "--network", "bcnet", "--kernel", b.kernel, "-p", "127.0.0.1:"+webPort+":80",
		"--health-cmd", webHealth, "--health-interval", healthEvery, imageRef, "httpd", "-f", "-p", "80", "-h", "/www"); err != nil {
		return 0, err
	}
	if err := b.waitHealthy("web"); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if err := b.checkWeb(); err != nil {
		return 0, err
	}
	if _, err := b.k("rm", "-f", "web", "db"); err != nil {
		return 0, err
	}
	if _, err := b.k("volume", "rm", "bcdata"); err != nil {
		return 0, err
	}
	if _, err := b.k("network", "rm", "bcnet"); err != nil {
		return 0, err
	}
	return took, nil
}

// healthFormat prints a VM's health, or its state when it has none yet.
const healthFormat = `{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}`

// waitHealthy polls kiln inspect until every VM named is healthy; one
// that turns unhealthy or stops is an error, with its output.
func (b *bench) waitHealthy(names ...string) error {
	deadline := time.Now().Add(waitLimit)
	for {
		out, err := b.k(append([]string{"inspect", "--format", healthFormat}, names...)...)
		if err != nil {
			return err
		}
		states := strings.Fields(out)
		if len(states) != len(names) {
			return fmt.Errorf("kiln inspect %s: %q", strings.Join(names, " "), out)
		}
		healthy := true
		for i, s := range states {
			switch s {
			case "healthy":
			case "starting", "running", "created":
				healthy = false
			default:
				logs, _ := b.k("logs", names[i])
				return fmt.Errorf("%s is %s, not healthy; its output:\n%s", names[i], s, logs)
			}
		}
		if healthy {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy in %s: %s", strings.Join(names, ", "), waitLimit, strings.Join(states, ", "))
		}
		select {
		case <-b.ctx.Done():
			return b.ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// checkWeb fetches web's page through its published port, inside the
// namespace (this program re-executed there with -get), so that both ways
// are known to have made the same service.
func (b *bench) checkWeb() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	out, err := b.cmd([]string{"ip", "netns", "exec", b.ns, self, "-get", "http://127.0.0.1:" + webPort + "/"})
	if err != nil {
		return err
	}
	if out != webIndex {
		return fmt.Errorf("GET of web's published port: %q, want %q", out, webIndex)
	}
	return nil
}

// fetch prints the body of a GET of url, which must answer 200.
func fetch(url string) error {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}

// daemonInNetns makes sure the daemon (whose VMs listen for the forwards,
// whose bridges it makes) runs in the namespace, not the host's.
func (b *bench) daemonInNetns() error {
	pb, err := os.ReadFile(filepath.Join(b.root, "run", "kiln.pid"))
	if err != nil {
		return fmt.Errorf("the daemon's pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pb)))
	if err != nil {
		return fmt.Errorf("the daemon's pid: %w", err)
	}
	var want, got syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+b.ns, &want); err != nil {
		return err
	}
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &got); err != nil {
		return fmt.Errorf("daemon pid %d: %w", pid, err)
	}
	if got.Ino != want.Ino {
		return fmt.Errorf("daemon pid %d is not in network namespace %s", pid, b.ns)
	}
	return nil
}

// removeAll removes, ignoring errors, whatever either way may have left.
func (b *bench) removeAll() {
	ctx := context.Background()
	for _, args := range [][]string{
		{"compose", "-f", b.file, "-p", project, "down", "-v"},
		{"rm", "-f", "web", "db"},
		{"volume", "rm", "bcdata"},
		{"network", "rm", "bcnet"},
	} {
		if b.daemonInNetns() != nil {
			return // no daemon (any more): nothing to remove through it
		}
		benchkit.Run(ctx, b.env, append([]string{b.kiln, "--root", b.root}, args...))
	}
}

// k runs kiln on the bench's root and returns its stdout.
func (b *bench) k(args ...string) (string, error) {
	return b.cmd(append([]string{b.kiln, "--root", b.root}, args...))
}

// compose runs kiln compose on the bench's file and project.
func (b *bench) compose(args ...string) (string, error) {
	return b.k(append([]string{"compose", "-f", b.file, "-p", project}, args...)...)
}

// cmd runs argv; anything but exit 0 is an error with its output.
func (b *bench) cmd(argv []string) (string, error) {
	r := benchkit.Run(b.ctx, b.env, argv)
	if r.Err != nil {
		return r.Stdout, fmt.Errorf("%s: %w:\n%s%s", strings.Join(argv, " "), r.Err, r.Stdout, r.Stderr)
	}
	if r.Code != 0 {
		return r.Stdout, fmt.Errorf("%s: exit %d:\n%s%s", strings.Join(argv, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout, nil
}

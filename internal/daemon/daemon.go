// Package daemon is kiln's daemon: the REST API (api/, version 1) over a
// unix socket, in front of the supervisor. The socket is 0600 in a
// 0700 directory, and requests from another uid than the daemon's (checked
// with SO_PEERCRED) or carrying an Origin header are refused.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/buildinfo"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/dockerapi"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/jail"
	"kiln.dev/kiln/internal/metrics"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/supervisor"
	"kiln.dev/kiln/internal/unixsock"
	"kiln.dev/kiln/internal/vm"
)

// Config configures the daemon.
type Config struct {
	// Root is the kiln root it serves.
	Root string
	// AllowUIDs are uids besides the daemon's own that may use the API.
	AllowUIDs []int
	Logger    *slog.Logger
	// JailUIDs is the range jailed QEMUs run as, "MIN-MAX" (--jail-uids);
	// "" means $KILN_JAIL_UIDS, else the default range.
	JailUIDs string
	// MemoryShare is the share of host memory the cgroups of running VMs
	// may hold together (--memory-share): above 0, at most 1.
	MemoryShare float64
	// ConsoleMaxSize is the serial console kept on disk per VM, a size
	// like 16m (--console-max-size); "" means $KILN_CONSOLE_MAX_SIZE, else
	// 16m.
	ConsoleMaxSize string
	// DiskReserve is the free space kept on the root's filesystem, a size
	// like 1g (--disk-reserve); "" means $KILN_DISK_RESERVE, else 1g.
	DiskReserve string
	// NoTemplates boots every VM: none starts from a booted template
	// (--templates=false, $KILN_TEMPLATES=0).
	NoTemplates bool
	// NoDockerAPI leaves the Docker Engine API unserved (--docker-api=false);
	// by default it is served on DockerSocketPath.
	NoDockerAPI bool
	// MetricsAddr, when set, is a TCP address where the daemon serves
	// GET /metrics (Prometheus' text format) to anyone who can reach it
	// (--metrics-addr, docker's flag; its port is 9323); the API socket
	// serves /metrics too.
	MetricsAddr string
}

// TemplatesEnv, 0, turns templates off for a daemon started without
// --templates.
const TemplatesEnv = vm.TemplatesEnv

// Defaults of the daemon's flags, for their help.
const (
	DefaultMemoryShare = vm.DefaultMemoryShare
	ConsoleMaxSizeEnv  = vm.ConsoleMaxSizeEnv
)

// confinement resolves the jail settings of cfg (with their environment
// fallbacks) and applies its disk reserve. The errors name the flag.
func (cfg Config) confinement() (vm.Confinement, error) {
	conf, err := vm.DefaultConfinement()
	if err != nil {
		return conf, err
	}
	if cfg.JailUIDs != "" {
		if conf.UIDs, err = jail.ParseRange(cfg.JailUIDs); err != nil {
			return conf, errdefs.Invalid("--jail-uids: " + err.Error())
		}
	}
	if cfg.MemoryShare <= 0 || cfg.MemoryShare > 1 {
		return conf, errdefs.Invalid(fmt.Sprintf("invalid --memory-share %g: want a share of host memory above 0 and at most 1", cfg.MemoryShare))
	}
	conf.MemoryShare = cfg.MemoryShare
	consoleMax := cfg.ConsoleMaxSize
	if consoleMax == "" {
		consoleMax = os.Getenv(vm.ConsoleMaxSizeEnv)
	}
	if consoleMax != "" {
		if conf.ConsoleMaxSize, err = vm.ParseConsoleMaxSize(consoleMax); err != nil {
			return conf, err
		}
	}
	reserve := cfg.DiskReserve
	if reserve == "" {
		reserve = os.Getenv(disk.FreeReserveEnv)
	}
	if reserve != "" {
		n, err := options.ParseSize(reserve)
		if err != nil {
			return conf, errdefs.Invalid(fmt.Sprintf("invalid --disk-reserve %q: want a size like 1g or 0", reserve))
		}
		disk.FreeReserve = n
	}
	return conf, nil
}

// FindInit returns the kiln-init a daemon started now boots its VMs with.
func FindInit() (string, error) { return vm.FindInit() }

// JailUIDs returns the uid range a daemon started now without --jail-uids
// jails its VMs' QEMUs in: $KILN_JAIL_UIDS, else the default range.
func JailUIDs() (jail.Range, error) {
	c, err := vm.DefaultConfinement()
	return c.UIDs, err
}

// SocketPath returns the API socket of the kiln root.
func SocketPath(root string) string { return filepath.Join(root, "run", "kiln.sock") }

// DockerSocketPath returns the socket where the daemon of the kiln root
// serves the Docker Engine API (DOCKER_HOST=unix://PATH).
func DockerSocketPath(root string) string { return filepath.Join(root, "run", "docker.sock") }

// Daemon serves one kiln root.
type Daemon struct {
	cfg Config
	db  *state.Store
	rt  *vm.Factory
	// conf is how VMs are confined, as the daemon resolved it.
	conf vm.Confinement
	// metrics are what /metrics serves.
	metrics *metrics.Metrics
	// monitor is the VM monitor's version, asked once.
	monitorOnce sync.Once
	monitor     string
	sup         *supervisor.Supervisor
	log         *slog.Logger
	uid         int
	lock        *os.File
}

// vmsByState counts the root's VMs by state, for the metrics.
func (d *Daemon) vmsByState() map[string]int {
	views, err := d.sup.List(context.Background())
	if err != nil {
		return nil
	}
	out := map[string]int{}
	for _, v := range views {
		out[v.Record.Status]++
	}
	return out
}

// metricsOnly is what the metrics address serves: GET /metrics, nothing
// of the API.
func (d *Daemon) metricsOnly() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metrics.Handler())
	return mux
}

// ErrRunning is returned when another daemon already serves the root.
var ErrRunning = errors.New("a kiln daemon is already running for this root")

// Run serves the API until ctx is done. ready, if not nil, is called once
// the socket accepts requests. VMs keep running after Run returns.
func Run(ctx context.Context, cfg Config, ready func()) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	conf, err := cfg.confinement()
	if err != nil {
		return err
	}
	var metricsLn net.Listener
	if cfg.MetricsAddr != "" {
		// First: a daemon that cannot serve what it was asked to makes
		// nothing and does not start.
		if metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return fmt.Errorf("--metrics-addr %s: %w", cfg.MetricsAddr, errdefs.Mark(err, errdefs.ErrInvalidArgument))
		}
		defer metricsLn.Close()
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, uid: os.Geteuid(), conf: conf}
	if err := os.MkdirAll(cfg.Root, 0o711); err != nil {
		return fmt.Errorf("creating kiln root: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Root, "daemon.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening daemon lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("%s (%s): %w", ErrRunning, cfg.Root, errdefs.ErrConflict)
	}
	d.lock = lock
	db, err := state.Open(filepath.Join(cfg.Root, "state.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	d.db = db
	rt, err := vm.New(cfg.Root, vm.WithLogger(d.log), vm.WithConfinement(conf), vm.WithTemplates(!cfg.NoTemplates))
	if err != nil {
		return err
	}
	d.rt = rt
	d.sup = supervisor.New(rt, db, d.log)
	d.metrics = metrics.New(d.vmsByState)
	d.metrics.SetVMs(d.sampleVMs)
	d.sup.SetObserver(d.metrics)
	// Deferred after db.Close, so run before it: Close waits for the
	// supervisor's goroutines, and none writes to the store after.
	defer d.sup.Close()
	if err := d.sup.Reconcile(ctx); err != nil {
		return fmt.Errorf("reconciling state: %w", err)
	}
	if metricsLn != nil {
		msrv := &http.Server{Handler: d.metricsOnly(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = msrv.Serve(metricsLn) }()
		defer msrv.Close()
		d.log.Info("serving metrics", "addr", metricsLn.Addr().String())
	}
	ln, err := listen(SocketPath(cfg.Root))
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           d.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerUID(c))
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if !cfg.NoDockerAPI {
		dsrv, err := d.serveDockerAPI(errc)
		if err != nil {
			_ = srv.Close()
			return err
		}
		defer dsrv.Close()
	}
	d.log.Info("kiln daemon serving", "root", cfg.Root, "socket", SocketPath(cfg.Root), "pid", os.Getpid())
	if ready != nil {
		ready()
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("serving API: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

// serveDockerAPI serves the Docker Engine API on the root's docker.sock,
// with the same permissions and peer check as kiln's socket. It is a
// translator in front of kiln's own API, reached through the kiln socket.
func (d *Daemon) serveDockerAPI(errc chan<- error) (*http.Server, error) {
	ln, err := listen(DockerSocketPath(d.cfg.Root))
	if err != nil {
		return nil, err
	}
	b := buildinfo.Self()
	host, _ := os.Hostname()
	api := dockerapi.New(client.New(SocketPath(d.cfg.Root)), dockerapi.Info{
		Version: b.Version(), Commit: b.Commit, GoVersion: b.GoVersion, Root: d.cfg.Root, Hostname: host,
	}, d.log)
	srv := &http.Server{
		Handler:           d.guard(api.Handler()),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerUID(c))
		},
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serving the Docker API: %w", err)
		}
	}()
	d.log.Info("serving the Docker API", "socket", DockerSocketPath(d.cfg.Root))
	return srv, nil
}

// listen makes the API socket, 0600 in a 0700 directory.
func listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating runtime dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("restricting runtime dir: %w", err)
	}
	os.Remove(path) // a stale socket: the daemon lock says no one serves it
	var ln net.Listener
	err := unixsock.WithPath(path, func(p string) error {
		var err error
		ln, err = net.Listen("unix", p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting %s: %w", path, err)
	}
	return ln, nil
}

type peerKey struct{}

// peerUID returns the uid of the process at the other end of c, or -1.
func peerUID(c net.Conn) int {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1
	}
	uid := -1
	_ = raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err == nil {
			uid = int(cred.Uid)
		}
	})
	return uid
}

// guard refuses requests from other uids and from browsers.
func (d *Daemon) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") != "" {
			writeError(w, http.StatusForbidden, "requests with an Origin header are refused: the kiln API is not for browsers")
			return
		}
		uid, ok := r.Context().Value(peerKey{}).(int)
		if !ok {
			uid = -1 // unknown: never taken for root
		}
		if uid != d.uid && !slices.Contains(d.cfg.AllowUIDs, uid) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("uid %d may not use this kiln daemon (it runs as uid %d; start it with --allow-uid %d to allow)", uid, d.uid, uid))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// sampleVMs reads each running VM for a metrics scrape: its QEMU's CPU
// time and PSS from the host's /proc, and its guest's memory from the
// guest agent, for which the scrape waits at most a second.
func (d *Daemon) sampleVMs() []metrics.VMSample {
	views, err := d.sup.List(context.Background())
	if err != nil {
		return nil
	}
	var out []metrics.VMSample
	var ids []string
	for _, v := range views {
		if (v.Record.Status != state.StatusRunning && v.Record.Status != state.StatusPaused) || v.Record.PID <= 0 {
			continue
		}
		s := metrics.VMSample{Name: v.Record.Name}
		s.HostCPUSeconds, s.HostPSSBytes = procUsage(v.Record.PID)
		out = append(out, s)
		ids = append(ids, v.Record.ID)
	}
	type guest struct {
		i           int
		ok          bool
		total, used uint64
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	results := make(chan guest, len(ids))
	for i, id := range ids {
		go func() {
			g := guest{i: i}
			if m, err := d.sup.Running(ctx, id); err == nil {
				if st, err := m.Stats(); err == nil && st.MemAvailable <= st.MemTotal {
					g.ok, g.total, g.used = true, st.MemTotal, st.MemTotal-st.MemAvailable
				}
			}
			results <- g
		}()
	}
	for range ids {
		select {
		case g := <-results:
			if g.ok {
				out[g.i].Guest, out[g.i].GuestMemTotal, out[g.i].GuestMemUsed = true, g.total, g.used
			}
		case <-ctx.Done():
			return out
		}
	}
	return out
}

// procUsage is a process's CPU time (user and system) and proportional
// set size, from /proc; zero where it cannot be read.
func procUsage(pid int) (cpuSeconds float64, pss uint64) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 12 {
				u, _ := strconv.ParseUint(f[11], 10, 64)
				k, _ := strconv.ParseUint(f[12], 10, 64)
				cpuSeconds = float64(u+k) / 100 // USER_HZ
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "Pss:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				pss = kb << 10
			}
		}
	}
	return cpuSeconds, pss
}

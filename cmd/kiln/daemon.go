package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/atomicfile"
	"kiln.dev/kiln/internal/buildinfo"
	"kiln.dev/kiln/internal/daemon"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/jail"
)

// readyFDEnv names the descriptor a daemon started by the CLI reports
// readiness on, so the CLI waits for it without polling.
const readyFDEnv = "KILN_READY_FD"

func newDaemonCmd(g *globals) *cobra.Command {
	var allow []int
	var uids string
	var memShare float64
	var consoleMax, diskReserve, metricsAddr string
	var templates, dockerAPI bool
	c := &cobra.Command{
		Use:   "daemon",
		Short: "Run the kiln daemon in the foreground (for systemd; the CLI starts one on demand)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			log := g.logger(cmd.ErrOrStderr())
			if g.logLevel == "warn" {
				log = (&globals{logLevel: "info"}).logger(cmd.ErrOrStderr())
			}
			ready := func() {
				_ = atomicfile.WriteFile(filepath.Join(g.root, "run", "kiln.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
				if fd, err := strconv.Atoi(os.Getenv(readyFDEnv)); err == nil {
					f := os.NewFile(uintptr(fd), "ready")
					fmt.Fprintln(f, "ready")
					f.Close()
				}
			}
			defer os.Remove(filepath.Join(g.root, "run", "kiln.pid"))
			return daemon.Run(ctx, daemon.Config{
				Root: g.root, AllowUIDs: allow, Logger: log,
				JailUIDs: uids, MemoryShare: memShare, ConsoleMaxSize: consoleMax, DiskReserve: diskReserve,
				NoTemplates: !templatesOn(cmd, templates), MetricsAddr: metricsAddr, NoDockerAPI: !dockerAPI,
			}, ready)
		},
	}
	c.Flags().IntSliceVar(&allow, "allow-uid", nil, "also accept API requests from this uid")
	c.Flags().StringVar(&uids, "jail-uids", "", fmt.Sprintf("uids (and gids) jailed VMs run as, MIN-MAX, used by no host user or group (default $%s or %d-%d)", jail.UIDsEnv, jail.DefaultUIDMin, jail.DefaultUIDMax))
	c.Flags().Float64Var(&memShare, "memory-share", daemon.DefaultMemoryShare, "share of host memory the cgroups of running VMs may hold together; a VM that would pass it is refused")
	c.Flags().StringVar(&consoleMax, "console-max-size", "", fmt.Sprintf("serial console kept on disk per VM, console.log and console.log.1 together (default $%s or 16m)", daemon.ConsoleMaxSizeEnv))
	c.Flags().StringVar(&diskReserve, "disk-reserve", "", fmt.Sprintf("free space kept on kiln's filesystem: no VM disk or volume is made when less is free (default $%s or 1g)", disk.FreeReserveEnv))
	c.Flags().StringVar(&metricsAddr, "metrics-addr", "", "also serve GET /metrics (Prometheus' text format) on this TCP address, e.g. 127.0.0.1:9323 (docker's); the API socket serves /metrics always")
	c.Flags().BoolVar(&dockerAPI, "docker-api", true, "serve the Docker Engine API (1.41) on <root>/run/docker.sock, so that DOCKER_HOST=unix://<root>/run/docker.sock points docker's CLI and SDKs at kiln")
	c.Flags().BoolVar(&templates, "templates", true, fmt.Sprintf("start VMs (bare programs, full images) from a booted template, made once per kernel, kiln-init, QEMU, memory, CPUs and devices under <root>/templates, instead of booting their kernel; kiln run --cold opts one VM out; --templates=false or $%s=0 turns them off", daemon.TemplatesEnv))
	return c
}

// templatesOn is whether the daemon starts VMs from templates: the flag
// when given, else $KILN_TEMPLATES (0 turns them off), else on.
func templatesOn(cmd *cobra.Command, flag bool) bool {
	if cmd.Flags().Changed("templates") {
		return flag
	}
	return os.Getenv(daemon.TemplatesEnv) != "0"
}

// connect returns a client of the root's daemon, starting one in the
// background when none answers (unless KILN_NO_AUTOSTART=1).
func connect(ctx context.Context, g *globals, stderr interface{ Write([]byte) (int, error) }) (*client.Client, error) {
	c := client.New(daemon.SocketPath(g.root))
	err := c.Ping(ctx)
	if err == nil {
		warnStaleDaemon(ctx, c, g.root, stderr)
		return c, nil
	}
	if !errors.Is(err, client.ErrNoDaemon) {
		return nil, err
	}
	if os.Getenv("KILN_NO_AUTOSTART") == "1" {
		return nil, fmt.Errorf("%w (KILN_NO_AUTOSTART=1: start one with `kiln --root %s daemon`)", err, g.root)
	}
	// One CLI at a time starts the daemon; the others find it answering.
	if err := os.MkdirAll(g.root, 0o711); err != nil {
		return nil, fmt.Errorf("creating kiln root: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(g.root, "autostart.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening autostart lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("taking autostart lock: %w", err)
	}
	if c.Ping(ctx) == nil {
		return c, nil
	}
	pid, err := startDaemon(g)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stderr, "kiln: started a daemon for %s (pid %d, log %s)\n", g.root, pid, filepath.Join(g.root, "daemon.log"))
	return c, c.Ping(ctx)
}

// warnStaleDaemon says so when the root's daemon runs a binary that no
// longer exists (a rebuilt or deleted checkout: it would look for
// kiln-init beside that binary), or another build than this CLI's.
func warnStaleDaemon(ctx context.Context, c *client.Client, root string, stderr interface{ Write([]byte) (int, error) }) {
	info, err := c.Info(ctx)
	if err != nil {
		return
	}
	if info.Executable != "" {
		if _, err := os.Stat(strings.TrimSuffix(info.Executable, " (deleted)")); err != nil || strings.HasSuffix(info.Executable, " (deleted)") {
			fmt.Fprintf(stderr, "kiln: warning: the daemon for %s (pid %d) runs %s, which no longer exists: stop it (kill %d; VMs keep running) and the next command starts a new one\n",
				root, info.PID, info.Executable, info.PID)
			return
		}
	}
	if w := buildMismatch(buildinfo.Self().BuildID, info, root); w != "" {
		fmt.Fprintln(stderr, "kiln: warning: "+w)
	}
}

// startDaemon starts `kiln daemon` for the root in its own session and
// waits until it reports ready on a pipe (or exits, with its last words).
func startDaemon(g *globals) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("finding kiln to start a daemon: %w", err)
	}
	if err := os.MkdirAll(g.root, 0o711); err != nil {
		return 0, fmt.Errorf("creating kiln root: %w", err)
	}
	logPath := filepath.Join(g.root, "daemon.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("opening daemon log: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("making readiness pipe: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(exe, "--root", g.root, "--log-level", "info", "daemon")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = append(os.Environ(), readyFDEnv+"=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return 0, fmt.Errorf("starting daemon: %w", err)
	}
	w.Close()
	pid := cmd.Process.Pid
	go cmd.Wait() // reap it should it die; a running daemon outlives us
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if strings.TrimSpace(s) == "ready" {
			return pid, nil
		}
	case <-time.After(time.Minute):
		return 0, fmt.Errorf("the daemon started for %s did not become ready within a minute: see %s", g.root, logPath)
	}
	return 0, fmt.Errorf("the daemon started for %s exited: %s", g.root, lastLogLine(logPath))
}

func lastLogLine(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return "see " + p
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

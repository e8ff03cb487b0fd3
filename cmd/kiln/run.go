package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/daemon"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/options"
)

type runFlags struct {
	name        string
	rm          bool
	memory      string
	cpus        int
	env         []string
	envFiles    []string
	labels      []string
	labelFiles  []string
	workdir     string
	entrypoint  string
	user        string
	kernel      string
	accel       string
	ulimits     []string
	stopTimeout int
	bootTimeout time.Duration
	unconfined  bool
	cold        bool
	addHosts    []string
	pull        string
	mode        string
	diskSize    string
	insecure    bool
	detach      bool
	restart     string
	logOpts     []string
	publish     []string
	network     string
	ip          string
	aliases     []string
	volumes     []string
	mounts      []string
	health      healthFlags
	rootfs      bool
}

func newRunCmd(g *globals) *cobra.Command {
	f := &runFlags{}
	c := &cobra.Command{
		Use:   "run [flags] IMAGE|PROGRAM [ARG...]",
		Short: "Boot a VM that runs an OCI image or one static program",
		Long: `Boot a microVM that runs IMAGE (an OCI image, pulled when missing, its config
honoured as docker does) or PROGRAM (a static x86-64 Linux executable on this
host, the VM's only program). Its stdout and stderr are printed as it runs,
and kiln exits with its exit status (128+n when signal n killed it). Ctrl-C or
SIGTERM stop the VM gracefully: the program gets its stop signal, then SIGKILL
after --time seconds. With -d the VM runs in the background.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRun(cmd, g, f, args)
		},
	}
	f.register(c)
	return c
}

// register adds run's flags (create's too) to c.
func (f *runFlags) register(c *cobra.Command) {
	c.Flags().SetInterspersed(false)
	fl := c.Flags()
	fl.StringVar(&f.name, "name", "", "name of the VM")
	fl.BoolVar(&f.rootfs, "rootfs", false, "the first argument is a root filesystem directory on this host, packed into the VM when it is created, and the rest the command to run in it")
	fl.BoolVar(&f.rm, "rm", false, "remove the VM's state when it ends")
	fl.StringVarP(&f.memory, "memory", "m", "", "guest memory, e.g. 256m or 1g (default 256m)")
	fl.IntVar(&f.cpus, "cpus", 1, "number of virtual CPUs")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable (KEY=VALUE, or KEY to pass the host's)")
	fl.StringArrayVar(&f.envFiles, "env-file", nil, "read environment variables from a file")
	fl.StringArrayVarP(&f.labels, "label", "l", nil, "set a label on the VM, KEY=VALUE (repeatable)")
	fl.StringArrayVar(&f.labelFiles, "label-file", nil, "read labels from a file, a KEY=VALUE per line")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working directory of the program in the guest")
	fl.StringVar(&f.entrypoint, "entrypoint", "", "run this guest path instead of the program (the program is at /usr/local/bin/<name>)")
	fl.StringVarP(&f.user, "user", "u", "", "uid[:gid] to run the program as")
	fl.StringVar(&f.kernel, "kernel", "", "guest kernel: a name from 'kiln kernel ls' or a path (default \"default\")")
	fl.StringVar(&f.accel, "accel", "auto", "accelerator: kvm, tcg or auto")
	fl.StringArrayVar(&f.ulimits, "ulimit", nil, "resource limit, name=soft[:hard] (e.g. nofile=1024:4096)")
	fl.IntVarP(&f.stopTimeout, "time", "t", int(options.DefaultStopGrace/time.Second), "seconds the program has to exit after a stop signal")
	fl.DurationVar(&f.bootTimeout, "boot-timeout", options.DefaultBootTimeout, "how long the VM may take to start its program")
	fl.StringArrayVar(&f.addHosts, "add-host", nil, "add NAME:ADDRESS to the guest's /etc/hosts; NAME:host-gateway is the host, and lets the VM reach the host's own (loopback) services, closed to VMs otherwise")
	fl.BoolVar(&f.cold, "cold", false, "always boot the guest kernel, never restore the VM from a booted template (see kiln daemon --templates)")
	fl.BoolVar(&f.unconfined, "unconfined", false, "run QEMU without its jail (own uid, namespaces, root, cgroup) and seccomp sandbox: only to debug a host that cannot confine VMs")
	fl.StringVar(&f.pull, "pull", options.PullMissing, "when to pull the image: missing, always or never")
	fl.StringVar(&f.mode, "mode", "", "how to run the image: full (its root filesystem) or binary (only its static binary); default: the image's "+options.ModeLabel+" label, else full")
	fl.BoolVar(&f.insecure, "insecure", false, "allow pulling the image over plain HTTP from a registry not on loopback")
	fl.StringVar(&f.diskSize, "disk-size", "", "size of the VM's writable disk for an image (sparse), e.g. 2g (default 10g)")
	fl.BoolVarP(&f.detach, "detach", "d", false, "run the VM in the background and print its ID")
	fl.StringVar(&f.restart, "restart", "no", "restart policy: no, on-failure[:max-retries], always, unless-stopped")
	fl.StringArrayVar(&f.logOpts, "log-opt", nil, "log option: max-size=10m, max-file=3")
	fl.StringArrayVarP(&f.publish, "publish", "p", nil, "publish a VM port on the host: [ip:][hostPort[-end]]:guestPort[-end][/tcp|/udp] (no host port: an ephemeral one, see kiln port)")
	fl.StringVar(&f.network, "network", network.ModeUser, "network: user (QEMU user-mode, NAT, published ports forwarded by QEMU), none (loopback only), or a bridge network's name (kiln network create)")
	fl.StringVar(&f.ip, "ip", "", "the VM's IPv4 address on its bridge network (default: the next free one)")
	fl.StringSliceVar(&f.aliases, "network-alias", nil, "another name the VM has on its bridge network's DNS (repeatable)")
	fl.StringArrayVarP(&f.volumes, "volume", "v", nil, "mount a named volume (NAME:/path[:ro], created when missing) or a host directory (/abs/dir:/path[:ro|rw])")
	fl.StringArrayVar(&f.mounts, "mount", nil, "mount as docker's --mount: type=volume|bind|bake,src=...,dst=...[,readonly] (bake: a host directory copied in at create time, read-only)")
	f.health.register(c)
}

func newCreateCmd(g *globals) *cobra.Command {
	f := &runFlags{}
	c := &cobra.Command{
		Use:   "create [flags] IMAGE|PROGRAM [ARG...]",
		Short: "Create a VM without starting it (kiln start [-a] starts it)",
		Long: `Create a VM as kiln run would, pulling its image when missing, and print its
ID; it does not start. kiln start starts it, kiln start -a stays with it as
kiln run does. Takes run's flags.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.detach {
				return errdefs.Invalid("create does not start the VM: -d is for kiln run")
			}
			ctx := context.Background()
			c, cfg, err := prepareCreate(ctx, cmd, g, f, args)
			if err != nil {
				return err
			}
			created, err := c.Create(ctx, cfg)
			if err != nil {
				return err
			}
			for _, w := range created.Warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "kiln: warning: %s\n", w)
			}
			fmt.Fprintln(cmd.OutOrStdout(), created.ID)
			return nil
		},
	}
	f.register(c)
	_ = c.Flags().MarkHidden("detach")
	return c
}

// prepareCreate turns run's command line into the daemon's create request,
// pulling a missing image through the daemon first (progress on stderr),
// and returns a client of the daemon.
func prepareCreate(ctx context.Context, cmd *cobra.Command, g *globals, f *runFlags, args []string) (*client.Client, api.VMConfig, error) {
	cfg, err := vmConfig(f, args)
	if err != nil {
		return nil, cfg, err
	}
	// A config the daemon would refuse is refused before any transfer.
	if cfg.Image != "" && cfg.Pull != options.PullNever {
		if err := daemon.CheckConfig(cfg); err != nil {
			return nil, cfg, err
		}
	}
	pulled, err := pullForRun(ctx, g, cfg.Image, cfg.Pull, cfg.Insecure, cmd.ErrOrStderr())
	if err != nil {
		return nil, cfg, err
	}
	if pulled {
		cfg.Pull = options.PullMissing
	}
	c, err := connect(ctx, g, cmd.ErrOrStderr())
	return c, cfg, err
}

// diskSize reads --disk-size: 0 when not given.
func diskSize(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	mib, err := options.ParseMemory(s)
	if err != nil {
		return 0, errdefs.Invalid(fmt.Sprintf("invalid disk size %q: want a size like 2g or 512m", s))
	}
	if mib == 0 {
		return 0, errdefs.Invalid(fmt.Sprintf("invalid disk size %q: must be at least %dm", s, options.MinDiskMiB))
	}
	return mib, nil
}

// vmConfig turns the command line into the daemon's create request. The
// first argument is a program when it is a file on this host (or reads as
// a path: "/…", "./…", "../…"), and an image otherwise. Host paths become
// absolute: the daemon does not share our working directory. The daemon
// checks the whole request; what is checked here is what only the command
// line knows (a flag's spelling, a file to read).
func vmConfig(f *runFlags, args []string) (api.VMConfig, error) {
	c := api.VMConfig{
		Name:           f.name,
		Cmd:            args[1:],
		WorkingDir:     f.workdir,
		User:           f.user,
		CPUs:           f.cpus,
		Accel:          f.accel,
		BootTimeout:    api.Duration(f.bootTimeout),
		Unconfined:     f.unconfined,
		Cold:           f.cold,
		ExtraHosts:     f.addHosts,
		AutoRemove:     f.rm,
		StopTimeout:    f.stopTimeout,
		IP:             f.ip,
		NetworkAliases: f.aliases,
	}
	if f.rootfs {
		if f.mode != "" {
			return c, errdefs.Invalid(fmt.Sprintf("--mode applies to images, and %s is a root directory", args[0]))
		}
		abs, err := filepath.Abs(args[0])
		if err != nil {
			return c, fmt.Errorf("resolving root directory: %w", err)
		}
		c.RootDir = abs
		if c.DiskMiB, err = diskSize(f.diskSize); err != nil {
			return c, err
		}
	} else if isImageArg(args[0]) {
		c.Image, c.Pull, c.Mode, c.Insecure = args[0], f.pull, f.mode, f.insecure
		var err error
		if c.DiskMiB, err = diskSize(f.diskSize); err != nil {
			return c, err
		}
	} else if f.mode != "" || f.diskSize != "" {
		return c, errdefs.Invalid(fmt.Sprintf("--mode and --disk-size apply to images, and %s is a file on this host", args[0]))
	} else {
		abs, err := filepath.Abs(args[0])
		if err != nil {
			return c, fmt.Errorf("resolving program path: %w", err)
		}
		c.Program = abs
	}
	if f.cpus == 0 {
		c.CPUs = -1 // 0 means "default" to the daemon; on the command line it is an error
	}
	if f.memory != "" {
		mib, err := options.ParseMemory(f.memory)
		if err != nil {
			return c, err
		}
		if mib == 0 {
			return c, fmt.Errorf("invalid memory %q: must be at least %dm", f.memory, options.MinMemoryMiB)
		}
		c.MemoryMiB = mib
	}
	if f.entrypoint != "" {
		c.Entrypoint = []string{f.entrypoint}
	}
	labels, err := readLabels(f.labels, f.labelFiles)
	if err != nil {
		return c, err
	}
	c.Labels = labels
	for _, name := range f.envFiles {
		fh, err := os.Open(name)
		if err != nil {
			return c, fmt.Errorf("reading env file: %w", err)
		}
		env, err := options.ParseEnvFile(fh, name, os.LookupEnv)
		fh.Close()
		if err != nil {
			return c, err
		}
		c.Env = append(c.Env, env...)
	}
	env, err := options.ParseEnv(f.env, os.LookupEnv)
	if err != nil {
		return c, err
	}
	c.Env = append(c.Env, env...)
	for _, u := range f.ulimits {
		r, err := options.ParseUlimit(u)
		if err != nil {
			return c, err
		}
		c.Ulimits = append(c.Ulimits, r)
	}
	if f.stopTimeout < 0 {
		return c, fmt.Errorf("invalid --time %d: must be 0 or more seconds", f.stopTimeout)
	}
	if c.Network, err = network.ParseMode(f.network); err != nil {
		return c, err
	}
	if c.Ports, err = network.ParsePorts(f.publish); err != nil {
		return c, err
	}
	if c.Network == network.ModeNone && len(c.Ports) > 0 {
		return c, errdefs.Invalid(fmt.Sprintf("cannot publish %s: --network none gives the VM no network", f.publish[0]))
	}
	if c.Mounts, err = parseMountFlags(f.volumes, f.mounts); err != nil {
		return c, err
	}
	c.Kernel = f.kernel
	if strings.Contains(c.Kernel, "/") {
		abs, err := filepath.Abs(c.Kernel)
		if err != nil {
			return c, fmt.Errorf("resolving kernel path: %w", err)
		}
		c.Kernel = abs
	}
	policy, err := options.ParseRestartPolicy(f.restart)
	if err != nil {
		return c, err
	}
	c.Restart = api.RestartPolicy(policy)
	if c.Log, err = options.ParseLogOpts(f.logOpts); err != nil {
		return c, err
	}
	if c.Healthcheck, c.HealthOnFailure, err = f.health.config(); err != nil {
		return c, err
	}
	return c, nil
}

func runRun(cmd *cobra.Command, g *globals, f *runFlags, args []string) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	ctx := context.Background()
	c, cfg, err := prepareCreate(ctx, cmd, g, f, args) // a pull may be Ctrl-C'd as usual
	if err != nil {
		return err
	}
	// Catch Ctrl-C and SIGTERM before anything starts, so that none is lost
	// between boot and the handler.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	created, err := c.Create(ctx, cfg)
	if err != nil {
		return err
	}
	for _, w := range created.Warnings {
		fmt.Fprintf(stderr, "kiln: warning: %s\n", w)
	}
	if f.detach {
		if err := c.Start(ctx, created.ID); err != nil {
			_ = c.Remove(ctx, created.ID, client.RemoveOptions{Force: true, Volumes: true})
			return err
		}
		fmt.Fprintln(stdout, created.ID)
		return nil
	}
	grace := time.Duration(f.stopTimeout) * time.Second
	return attach(ctx, c, created.ID, &grace, true, time.Time{}, sigs, stdout, stderr)
}

// attach starts a created VM and stays with it: its output is printed as it
// comes, Ctrl-C or SIGTERM stop it gracefully, within grace (nil: the VM's
// own; twice: kill it), and kiln exits with the program's exit code. With
// removeOnFail a VM that cannot start is removed (kiln run leaves nothing
// behind); kiln start -a keeps it. Output from before since (a stopped
// VM's earlier runs) is not printed.
func attach(ctx context.Context, c *client.Client, id string, grace *time.Duration, removeOnFail bool, since time.Time, sigs <-chan os.Signal, stdout, stderr io.Writer) error {
	// The wait is in place before the VM starts, so its end is seen even
	// when it is removed (--rm) the moment it ends.
	type waited struct {
		r   api.WaitResponse
		err error
	}
	waitc := make(chan waited, 1)
	registered := make(chan struct{})
	go func() {
		r, err := c.Wait(ctx, id, true, func() { close(registered) })
		waitc <- waited{r, err}
	}()
	select {
	case <-registered:
	case w := <-waitc:
		if removeOnFail {
			_ = c.Remove(ctx, id, client.RemoveOptions{Force: true, Volumes: true})
		}
		return w.err
	}
	logsDone := make(chan error, 1)
	follow := func() {
		o := client.LogOptions{Follow: true, Tail: -1}
		if !since.IsZero() {
			o.Since = since.Format(time.RFC3339Nano)
		}
		logsDone <- c.Logs(ctx, id, o, printEntry(stdout, stderr, false))
	}
	// A VM that never ran is followed from before its start (following it
	// waits for its first run). A VM that ran before is followed once its
	// new run is under way: following it earlier ends at once, its last
	// run being over; lines of the new run from before the follow are
	// those since, stored.
	if since.IsZero() {
		go follow()
	}
	if err := c.Start(ctx, id); err != nil {
		if removeOnFail {
			_ = c.Remove(ctx, id, client.RemoveOptions{Force: true, Volumes: true})
		}
		return err
	}
	if !since.IsZero() {
		go follow()
	}
	go func() {
		stopping := false
		for sig := range sigs {
			if stopping {
				fmt.Fprintf(stderr, "kiln: %v again: killing the VM\n", sig)
				_ = c.Kill(context.Background(), id, "KILL")
				continue
			}
			stopping = true
			go func() {
				if err := c.Stop(context.Background(), id, grace); err != nil && !errors.Is(err, client.ErrNotFound) {
					fmt.Fprintf(stderr, "kiln: stopping the VM: %v\n", err)
				}
			}()
		}
	}()
	w := <-waitc
	<-logsDone
	if w.err != nil {
		return w.err
	}
	if w.r.Error != "" {
		fmt.Fprintf(stderr, "kiln: %s\n", w.r.Error)
	}
	if w.r.ExitCode != 0 {
		return &exitCode{w.r.ExitCode}
	}
	return nil
}

// isImageArg reports whether run's first argument names an image rather
// than a program on this host.
func isImageArg(arg string) bool {
	if _, err := os.Stat(arg); err == nil {
		return false
	}
	return !strings.HasPrefix(arg, "/") && !strings.HasPrefix(arg, "./") && !strings.HasPrefix(arg, "../") && arg != "." && arg != ".."
}

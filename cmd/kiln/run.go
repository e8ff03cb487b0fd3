package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/internal/follow"
	"kiln.dev/kiln/internal/runtime"
	"kiln.dev/kiln/internal/vmm"
)

type runFlags struct {
	name        string
	rm          bool
	memory      string
	cpus        int
	env         []string
	envFiles    []string
	workdir     string
	entrypoint  string
	user        string
	kernel      string
	accel       string
	ulimits     []string
	stopTimeout int
	bootTimeout time.Duration
}

func newRunCmd(g *globals) *cobra.Command {
	f := &runFlags{}
	c := &cobra.Command{
		Use:   "run [flags] PROGRAM [ARG...]",
		Short: "Boot a VM that runs one static program, and wait for it",
		Long: `Boot a microVM whose only job is PROGRAM, a static x86-64 Linux executable
on this host. Its stdout and stderr are printed as it runs, and kiln exits with
its exit status (128+n when signal n killed it). Ctrl-C or SIGTERM stop the VM
gracefully: the program gets SIGTERM, then SIGKILL after --time seconds.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRun(cmd, g, f, args)
		},
	}
	c.Flags().SetInterspersed(false)
	fl := c.Flags()
	fl.StringVar(&f.name, "name", "", "name of the VM")
	fl.BoolVar(&f.rm, "rm", false, "remove the VM's state when it ends")
	fl.StringVarP(&f.memory, "memory", "m", "", "guest memory, e.g. 256m or 1g (default 256m)")
	fl.IntVar(&f.cpus, "cpus", 1, "number of virtual CPUs")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable (KEY=VALUE, or KEY to pass the host's)")
	fl.StringArrayVar(&f.envFiles, "env-file", nil, "read environment variables from a file")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working directory of the program in the guest")
	fl.StringVar(&f.entrypoint, "entrypoint", "", "run this guest path instead of the program (the program is at /usr/local/bin/<name>)")
	fl.StringVarP(&f.user, "user", "u", "", "uid[:gid] to run the program as")
	fl.StringVar(&f.kernel, "kernel", "", "guest kernel: a name from 'kiln kernel ls' or a path (default \"default\")")
	fl.StringVar(&f.accel, "accel", "auto", "accelerator: kvm, tcg or auto")
	fl.StringArrayVar(&f.ulimits, "ulimit", nil, "resource limit, name=soft[:hard] (e.g. nofile=1024:4096)")
	fl.IntVarP(&f.stopTimeout, "time", "t", int(runtime.DefaultStopGrace/time.Second), "seconds the program has to exit after a stop signal")
	fl.DurationVar(&f.bootTimeout, "boot-timeout", runtime.DefaultBootTimeout, "how long the VM may take to start its program")
	return c
}

// specFromFlags turns the command line into a runtime.Spec.
func specFromFlags(f *runFlags, args []string) (runtime.Spec, error) {
	s := runtime.Spec{
		Name:        f.name,
		Program:     args[0],
		Cmd:         args[1:],
		WorkingDir:  f.workdir,
		User:        f.user,
		CPUs:        f.cpus,
		Kernel:      f.kernel,
		Accel:       vmm.Accel(f.accel),
		BootTimeout: f.bootTimeout,
	}
	if f.cpus == 0 {
		s.CPUs = -1 // 0 means "default" to Validate; on the command line it is an error
	}
	if f.memory != "" {
		mib, err := runtime.ParseMemory(f.memory)
		if err != nil {
			return s, err
		}
		if mib == 0 {
			return s, fmt.Errorf("invalid memory %q: must be at least %dm", f.memory, runtime.MinMemoryMiB)
		}
		s.MemoryMiB = mib
	}
	if f.entrypoint != "" {
		s.Entrypoint = []string{f.entrypoint}
	}
	for _, name := range f.envFiles {
		fh, err := os.Open(name)
		if err != nil {
			return s, fmt.Errorf("reading env file: %w", err)
		}
		env, err := runtime.ParseEnvFile(fh, name, os.LookupEnv)
		fh.Close()
		if err != nil {
			return s, err
		}
		s.Env = append(s.Env, env...)
	}
	env, err := runtime.ParseEnv(f.env, os.LookupEnv)
	if err != nil {
		return s, err
	}
	s.Env = append(s.Env, env...)
	for _, u := range f.ulimits {
		r, err := runtime.ParseUlimit(u)
		if err != nil {
			return s, err
		}
		s.Rlimits = append(s.Rlimits, r)
	}
	if f.stopTimeout < 0 {
		return s, fmt.Errorf("invalid --time %d: must be 0 or more seconds", f.stopTimeout)
	}
	return s, nil
}

func runRun(cmd *cobra.Command, g *globals, f *runFlags, args []string) error {
	spec, err := specFromFlags(f, args)
	if err != nil {
		return err
	}
	stderr := cmd.ErrOrStderr()
	rt, err := runtime.New(g.root, runtime.WithLogger(g.logger(stderr)))
	if err != nil {
		return err
	}
	// Catch Ctrl-C and SIGTERM before anything starts, so that none is lost
	// between boot and the handler.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	ctx := context.Background()
	vm, err := rt.Create(ctx, spec)
	if err != nil {
		return err
	}
	if vm.Accel.Warning != "" {
		fmt.Fprintf(stderr, "kiln: warning: %s\n", vm.Accel.Warning)
	}
	var outputs sync.WaitGroup
	var followers []*follow.Follower
	for _, o := range []struct {
		path string
		w    io.Writer
	}{{vm.Stdout(), cmd.OutOrStdout()}, {vm.Stderr(), stderr}} {
		fl, err := follow.Open(o.path, 0)
		if err != nil {
			vm.Remove()
			return err
		}
		followers = append(followers, fl)
		outputs.Add(1)
		go func(w io.Writer) {
			defer outputs.Done()
			_ = fl.Copy(w)
		}(o.w)
	}
	stopOutputs := func() {
		for _, fl := range followers {
			fl.Stop()
		}
		outputs.Wait()
	}
	if err := vm.Start(ctx); err != nil {
		stopOutputs()
		vm.Remove()
		return err
	}
	grace := time.Duration(f.stopTimeout) * time.Second
	go func() {
		stopping := false
		for sig := range sigs {
			if stopping {
				fmt.Fprintf(stderr, "kiln: %v again: killing VM %s\n", sig, vm.Name)
				_ = vm.Kill()
				continue
			}
			stopping = true
			go func() {
				if err := vm.Stop(context.Background(), grace); err != nil && !errors.Is(err, vmm.ErrTimeout) {
					fmt.Fprintf(stderr, "kiln: stopping VM %s: %v\n", vm.Name, err)
				}
			}()
		}
	}()
	exit, err := vm.Wait(ctx)
	stopOutputs()
	if f.rm {
		if rerr := vm.Remove(); rerr != nil {
			fmt.Fprintf(stderr, "kiln: %v\n", rerr)
		}
	}
	if err != nil {
		return err
	}
	if exit.Err != nil {
		fmt.Fprintf(stderr, "kiln: %v\n", exit.Err)
	}
	if exit.Code != 0 {
		return &exitCode{exit.Code}
	}
	return nil
}

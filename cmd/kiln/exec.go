package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
)

func newExecCmd(g *globals) *cobra.Command {
	var interactive, tty bool
	var env []string
	var user, workdir string
	c := &cobra.Command{
		Use:   "exec [-i] [-t] [-e K=V] [-u USER] [-w DIR] VM COMMAND [ARG...]",
		Short: "Run a command in a running VM",
		Long: `Run COMMAND in a running VM through its guest agent, as docker exec does:
with the VM program's environment (plus -e), working directory and user
unless -w or -u say otherwise. Signals kiln exec gets (INT, TERM, HUP, QUIT,
USR1, USR2) are sent to the command. kiln exits with the command's exit code:
126 when it cannot be executed, 127 when it is not found. -i sends stdin;
-t gives the command a pseudo-terminal (the local terminal goes raw and its
size follows the window).`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, e := range env {
				if k, _, _ := strings.Cut(e, "="); k == "" {
					return errdefs.Invalid(fmt.Sprintf("invalid environment variable %q: want KEY=VALUE", e))
				}
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			cfg := api.ExecConfig{Cmd: args[1:], Env: expandEnv(env), User: user, WorkingDir: workdir, Tty: tty, Stdin: interactive}
			return runExec(cmd, cl, args[0], cfg)
		},
	}
	c.Flags().SetInterspersed(false)
	c.Flags().BoolVarP(&interactive, "interactive", "i", false, "send stdin to the command")
	c.Flags().BoolVarP(&tty, "tty", "t", false, "give the command a pseudo-terminal")
	c.Flags().StringArrayVarP(&env, "env", "e", nil, "set an environment variable (KEY=VALUE, or KEY to pass the host's)")
	c.Flags().StringVarP(&user, "user", "u", "", "user to run as: name|uid[:group|gid]")
	c.Flags().StringVarP(&workdir, "workdir", "w", "", "working directory in the guest")
	return c
}

// expandEnv turns a bare KEY into KEY=value from this process, as docker.
func expandEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, e := range env {
		if !strings.Contains(e, "=") {
			v, ok := os.LookupEnv(e)
			if !ok {
				continue
			}
			e += "=" + v
		}
		out = append(out, e)
	}
	return out
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func termSize(f *os.File) (uint16, uint16) {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 24, 80
	}
	return ws.Row, ws.Col
}

// makeRaw puts the terminal in raw mode, as cfmakeraw does, and returns
// what restores it.
func makeRaw(f *os.File) (func(), error) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("reading terminal mode: %w", err)
	}
	t := *old
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, fmt.Errorf("setting raw terminal mode: %w", err)
	}
	done := false
	return func() {
		if !done {
			done = true
			_ = unix.IoctlSetTermios(fd, unix.TCSETS, old)
		}
	}, nil
}

var errNoCopy = errors.New("kiln cp copies between a VM and this host: one of SRC and DEST is VM:PATH")

// splitVMPath splits "VM:PATH"; a path with a slash before any colon is a
// host path (as docker: ./a:b is local).
func splitVMPath(arg string) (vm, p string, ok bool) {
	i := strings.Index(arg, ":")
	if i <= 0 || strings.Contains(arg[:i], "/") {
		return "", arg, false
	}
	return arg[:i], arg[i+1:], true
}

// runExec runs cfg in the VM and stays with it as kiln exec does: the
// local terminal raw with -t (its size following the window), signals
// passed on, stdin with -i; it returns the command's exit code as an
// *exitCode.
func runExec(cmd *cobra.Command, cl *client.Client, vm string, cfg api.ExecConfig) error {
	ctx := cmd.Context()
	in, _ := cmd.InOrStdin().(*os.File)
	var restore func()
	var err error
	if cfg.Tty {
		if in == nil || !isTerminal(in) {
			return errdefs.Invalid("-t needs stdin to be a terminal")
		}
		cfg.Rows, cfg.Cols = termSize(in)
	}
	s, err := cl.Exec(ctx, vm, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	if cfg.Tty {
		if restore, err = makeRaw(in); err != nil {
			return err
		}
		defer restore()
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				r, c := termSize(in)
				_ = s.Resize(r, c)
			}
		}()
	}
	// Signals to kiln exec are the command's, as docker run's
	// --sig-proxy (with a tty, ^C travels as a byte instead).
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	go func() {
		for sg := range sigs {
			_ = s.Signal(int(sg.(syscall.Signal)))
		}
	}()
	var stdin io.Reader
	if cfg.Stdin {
		stdin = cmd.InOrStdin()
	}
	e, err := s.Stream(stdin, cmd.OutOrStdout(), cmd.ErrOrStderr())
	if restore != nil {
		restore()
	}
	if err != nil {
		return err
	}
	if e.Error != "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "kiln: exec: %s\n", e.Error)
	}
	if e.ExitCode != 0 {
		return &exitCode{code: e.ExitCode}
	}
	return nil
}

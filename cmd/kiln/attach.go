package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
)

// newAttachCmd is docker attach for a running VM's program: its output
// from now on, signals passed to it (--sig-proxy), and kiln's exit code
// the program's when it ends. The program has no stdin or terminal to
// attach to yet.
func newAttachCmd(g *globals) *cobra.Command {
	var sigProxy bool
	c := &cobra.Command{
		Use:   "attach [--sig-proxy=false] VM",
		Short: "Follow a running VM's program: its output from now, signals passed on, its exit code",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			v, err := cl.Inspect(ctx, args[0])
			if err != nil {
				return err
			}
			if !v.State.Running {
				return fmt.Errorf("VM %s is %s: you cannot attach to a VM that is not running, start it first (kiln start -a %s): %w", v.Name, v.State.Status, v.Name, errdefs.ErrConflict)
			}
			since := time.Now()
			type waited struct {
				r   api.WaitResponse
				err error
			}
			waitc := make(chan waited, 1)
			go func() {
				r, err := cl.Wait(ctx, v.ID, false, nil)
				waitc <- waited{r, err}
			}()
			if sigProxy {
				sigs := make(chan os.Signal, 4)
				signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
				defer signal.Stop(sigs)
				go func() {
					for s := range sigs {
						_ = cl.Kill(ctx, v.ID, fmt.Sprint(int(s.(syscall.Signal))))
					}
				}()
			}
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			err = cl.Logs(ctx, v.ID, client.LogOptions{Follow: true, Tail: -1, Since: since.Format(time.RFC3339Nano)}, printEntry(stdout, stderr, false))
			if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				return err
			}
			w := <-waitc
			if w.err != nil {
				return w.err
			}
			if w.r.ExitCode != 0 {
				return &exitCode{w.r.ExitCode}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&sigProxy, "sig-proxy", true, "pass the signals kiln gets to the program")
	return c
}

package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
)

// newUpdateCmd is docker update: the restart policy now, memory and CPUs
// from the VM's next start (a VM's memory is its guest's RAM, fixed while
// it runs).
func newUpdateCmd(g *globals) *cobra.Command {
	var restart, memory string
	var cpus int
	var c *cobra.Command
	c = eachVM(g, "update [--restart POLICY] [-m MEMORY] [--cpus N] VM...",
		"Change VMs' restart policy (at once) and memory and CPUs (from their next start)",
		func(ctx context.Context, cl *client.Client, ref string) (string, error) {
			var u api.VMUpdate
			if c.Flags().Changed("restart") {
				p, err := options.ParseRestartPolicy(restart)
				if err != nil {
					return "", err
				}
				rp := api.RestartPolicy(p)
				u.Restart = &rp
			}
			if c.Flags().Changed("memory") {
				mib, err := options.ParseMemory(memory)
				if err != nil {
					return "", err
				}
				u.MemoryMiB = &mib
			}
			if c.Flags().Changed("cpus") {
				u.CPUs = &cpus
			}
			if u.Restart == nil && u.MemoryMiB == nil && u.CPUs == nil {
				return "", errdefs.Invalid("nothing to update: give --restart, --memory or --cpus")
			}
			warnings, err := cl.Update(ctx, ref, u)
			for _, w := range warnings {
				fmt.Fprintf(c.ErrOrStderr(), "kiln: warning: %s\n", w)
			}
			return ref, err
		})
	c.Flags().StringVar(&restart, "restart", "", "restart policy: no, on-failure[:N], always, unless-stopped")
	c.Flags().StringVarP(&memory, "memory", "m", "", "the guest's memory, e.g. 512m (from the VM's next start)")
	c.Flags().IntVar(&cpus, "cpus", 0, "the guest's vCPUs (from the VM's next start)")
	return c
}

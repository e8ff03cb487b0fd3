package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newTopCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "top VM",
		Short: "Show the processes in a running VM's guest, as docker top",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			top, err := cl.Top(ctx, args[0])
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "UID\tPID\tPPID\tSTAT\tTIME\tRSS\tCMD")
			for _, p := range top.Processes {
				fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%s\t%s\n", p.UID, p.PID, p.PPID, p.State,
					cpuTime(p.CPUSeconds), humanBytes(int64(p.RSSBytes)), p.Cmd)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if top.Truncated {
				fmt.Fprintf(cmd.ErrOrStderr(), "kiln: the guest has more processes than shown (%d)\n", len(top.Processes))
			}
			return nil
		},
	}
}

// cpuTime is ps's TIME: hours, minutes and seconds of CPU.
func cpuTime(s float64) string {
	d := time.Duration(s * float64(time.Second))
	return fmt.Sprintf("%02d:%02d:%02d", int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60)
}

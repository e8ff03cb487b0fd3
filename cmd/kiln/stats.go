package main

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/client"
)

func newStatsCmd(g *globals) *cobra.Command {
	var noStream bool
	c := &cobra.Command{
		Use:   "stats [--no-stream] VM...",
		Short: "Show running VMs' memory, load and process count, as their guests see them",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			for {
				if err := printStats(cmd.OutOrStdout(), cl, cmd, args); err != nil || noStream {
					return err
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
			}
		},
	}
	c.Flags().BoolVar(&noStream, "no-stream", false, "print once and exit")
	return c
}

func printStats(w io.Writer, cl *client.Client, cmd *cobra.Command, refs []string) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tMEM USAGE / LIMIT\tMEM %\tLOAD 1/5/15\tPIDS")
	var errs []error
	for _, ref := range refs {
		s, err := cl.Stats(cmd.Context(), ref)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		used := s.MemTotal - s.MemAvailable
		pct := 0.0
		if s.MemTotal > 0 {
			pct = 100 * float64(used) / float64(s.MemTotal)
		}
		fmt.Fprintf(tw, "%s\t%.1fMiB / %.1fMiB\t%.1f%%\t%.2f %.2f %.2f\t%d\n", ref, mib(used), mib(s.MemTotal), pct, s.Load[0], s.Load[1], s.Load[2], s.Processes)
	}
	tw.Flush()
	return errors.Join(errs...)
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

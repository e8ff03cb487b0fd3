package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"kiln.dev/kiln/internal/options"
)

// checkpointCommands are `kiln checkpoint create|ls|rm`, as docker's.
func checkpointCommands(g *globals) *cobra.Command {
	group := &cobra.Command{Use: "checkpoint", Short: "Save running VMs (memory, devices, own disk) and resume them with start --checkpoint"}
	group.AddCommand(newCheckpointCreateCmd(g), newCheckpointLsCmd(g), newCheckpointRmCmd(g))
	return group
}

func newCheckpointCreateCmd(g *globals) *cobra.Command {
	var leave bool
	c := &cobra.Command{
		Use:   "create [--leave-running] VM CHECKPOINT",
		Short: "Save a running VM as a checkpoint; the VM then stops unless --leave-running",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := options.ValidateCheckpointName(args[1]); err != nil {
				return err
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := cl.CreateCheckpoint(ctx, args[0], args[1], leave); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), args[1])
			return nil
		},
	}
	c.Flags().BoolVar(&leave, "leave-running", false, "let the VM run on once saved")
	return c
}

func newCheckpointLsCmd(g *globals) *cobra.Command {
	var quiet bool
	c := &cobra.Command{
		Use:     "ls [-q] VM",
		Aliases: []string{"list"},
		Short:   "List a VM's checkpoints",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			cps, err := cl.Checkpoints(ctx, args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if quiet {
				for _, c := range cps {
					fmt.Fprintln(out, c.Name)
				}
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "CHECKPOINT NAME\tCREATED\tSIZE")
			now := time.Now()
			for _, c := range cps {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, imageAge(c.Created, now), humanBytes(c.Size))
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print checkpoint names only")
	return c
}

func newCheckpointRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm VM CHECKPOINT",
		Aliases: []string{"remove"},
		Short:   "Remove a VM's checkpoint",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := options.ValidateCheckpointName(args[1]); err != nil {
				return err
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := cl.RemoveCheckpoint(ctx, args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), args[1])
			return nil
		},
	}
}

package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// newTemplateCmd is `kiln template`: the booted templates the daemon
// starts VMs from (unless --templates=false).
func newTemplateCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "template",
		Short: "Manage the booted templates VMs start from",
	}
	c.AddCommand(&cobra.Command{
		Use:   "prune",
		Short: "Remove every template (the next VM that needs one makes it again)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			r, err := cl.PruneTemplates(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Removed %d templates\nTotal reclaimed space: %s\n", r.Removed, humanBytes(r.SpaceReclaimed))
			return nil
		},
	})
	return c
}

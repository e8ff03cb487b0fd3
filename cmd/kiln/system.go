package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
)

func newSystemCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "system", Short: "What kiln's root takes on disk, and removing what nothing uses"}
	c.AddCommand(newSystemDfCmd(g), newSystemPruneCmd(g))
	return c
}

func newSystemDfCmd(g *globals) *cobra.Command {
	var verbose bool
	var format string
	c := &cobra.Command{
		Use:   "df [-v] [--format json]",
		Short: "Show what images, VMs, volumes and caches take on disk, as docker system df",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "" && format != "json" {
				return errdefs.Invalid(fmt.Sprintf("invalid --format %q: want json, or none for the table", format))
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			u, err := cl.DiskUsage(ctx)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if format == "json" {
				return printJSON(out, u)
			}
			printDiskUsage(out, u, verbose)
			return nil
		},
	}
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "list each image, VM and volume")
	c.Flags().StringVar(&format, "format", "", "json: the daemon's answer as it is")
	return c
}

// printDiskUsage prints docker system df's summary table: TYPE, TOTAL,
// ACTIVE, SIZE, RECLAIMABLE (what a prune could free).
func printDiskUsage(w io.Writer, u api.DiskUsage, verbose bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tTOTAL\tACTIVE\tSIZE\tRECLAIMABLE")
	row := func(kind string, total, active int, size, reclaimable int64) {
		pct := ""
		if size > 0 {
			pct = fmt.Sprintf(" (%d%%)", reclaimable*100/size)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s%s\n", kind, total, active, humanBytes(size), humanBytes(reclaimable), pct)
	}
	var size, free int64
	active := 0
	for _, i := range u.Images {
		size += i.Size
		if i.VMs > 0 {
			active++
		} else {
			free += i.Size
		}
	}
	row("Images", len(u.Images), active, size, free)
	size, free, active = 0, 0, 0
	for _, v := range u.VMs {
		size += v.SizeBytes
		if isRunningStatus(v.Status) {
			active++
		} else {
			free += v.SizeBytes
		}
	}
	row("VMs", len(u.VMs), active, size, free)
	size, free, active = 0, 0, 0
	for _, v := range u.Volumes {
		size += v.SizeBytes
		if v.VMs > 0 {
			active++
		} else {
			free += v.SizeBytes
		}
	}
	row("Local Volumes", len(u.Volumes), active, size, free)
	cache := u.RootfsBytes + u.CacheBytes + u.TemplateBytes
	row("Cache", 3, 0, cache, u.TemplateBytes)
	tw.Flush()
	if !verbose {
		return
	}
	fmt.Fprintln(w, "\nImages:")
	tw = tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "REPOSITORY:TAG\tIMAGE ID\tSIZE\tVMS")
	for _, i := range u.Images {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", strings.Join(i.RepoTags, ","), shortImageID(i.ID), humanBytes(i.Size), i.VMs)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nVMs:")
	tw = tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "VM ID\tNAME\tSTATUS\tSIZE")
	for _, v := range u.VMs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.ID[:12], v.Name, v.Status, humanBytes(v.SizeBytes))
	}
	tw.Flush()
	fmt.Fprintln(w, "\nLocal Volumes:")
	tw = tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "VOLUME NAME\tVMS\tSIZE")
	for _, v := range u.Volumes {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", v.Name, v.VMs, humanBytes(v.SizeBytes))
	}
	tw.Flush()
	fmt.Fprintf(w, "\nCache: root filesystems %s, initramfs %s, templates %s\n", humanBytes(u.RootfsBytes), humanBytes(u.CacheBytes), humanBytes(u.TemplateBytes))
}

func isRunningStatus(s string) bool {
	return s == "running" || s == "paused" || s == "starting" || s == "stopping" || s == "restarting"
}

func newSystemPruneCmd(g *globals) *cobra.Command {
	var all, volumes, force bool
	c := &cobra.Command{
		Use:   "prune [-a] [--volumes] [-f]",
		Short: "Remove stopped VMs, networks no VM is on, unused image data and templates (-a: images no VM uses; --volumes: volumes no VM names)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if !force {
				fmt.Fprintln(out, "WARNING! This will remove:")
				fmt.Fprintln(out, "  - all stopped VMs")
				fmt.Fprintln(out, "  - all networks not used by at least one VM")
				if all {
					fmt.Fprintln(out, "  - all images without at least one VM using them")
				} else {
					fmt.Fprintln(out, "  - image data no image refers to")
				}
				if volumes {
					fmt.Fprintln(out, "  - all volumes not used by at least one VM")
				}
				fmt.Fprintln(out, "  - all booted templates")
				fmt.Fprint(out, "\nAre you sure you want to continue? [y/N] ")
				answer, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
					fmt.Fprintln(out, "\nNothing removed.")
					return nil
				}
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			freed, err := prune(cmd, cl, all, volumes)
			fmt.Fprintf(out, "\nTotal reclaimed space: %s\n", humanBytes(freed))
			return err
		},
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "remove every image no VM uses, not only unreferenced image data")
	c.Flags().BoolVar(&volumes, "volumes", false, "remove volumes no VM names too")
	c.Flags().BoolVarP(&force, "force", "f", false, "do not ask for confirmation")
	return c
}

// prune removes what nothing uses, through the daemon's own verbs, and
// returns the bytes freed; it goes on after a failure and reports them
// all.
func prune(cmd *cobra.Command, cl *client.Client, all, volumes bool) (int64, error) {
	ctx, out := cmd.Context(), cmd.OutOrStdout()
	var errs []error
	var freed int64
	usage, err := cl.DiskUsage(ctx)
	if err != nil {
		return 0, err
	}
	var removed []string
	for _, v := range usage.VMs {
		if isRunningStatus(v.Status) {
			continue
		}
		if err := cl.Remove(ctx, v.ID, client.RemoveOptions{Volumes: true}); err != nil {
			errs = append(errs, err)
			continue
		}
		freed += v.SizeBytes
		removed = append(removed, v.ID)
	}
	printList(out, "Deleted VMs:", removed)
	nets, err := cl.Networks(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	removed = nil
	for _, n := range nets {
		if len(n.VMs) > 0 {
			continue
		}
		if err := cl.RemoveNetwork(ctx, n.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, n.Name)
	}
	printList(out, "Deleted Networks:", removed)
	if volumes {
		r, err := cl.PruneVolumes(ctx)
		if err != nil {
			errs = append(errs, err)
		}
		freed += r.SpaceReclaimed
		printList(out, "Deleted Volumes:", r.Removed)
	}
	if all {
		// Again, now that the stopped VMs are gone.
		if usage, err = cl.DiskUsage(ctx); err != nil {
			return freed, errors.Join(append(errs, err)...)
		}
		removed = nil
		for _, img := range usage.Images {
			if img.VMs > 0 {
				continue
			}
			del, err := cl.RemoveImages(ctx, img.ID, false)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, d := range del {
				if d.Untagged != "" {
					removed = append(removed, "untagged: "+d.Untagged)
				}
				if d.Deleted != "" {
					removed = append(removed, "deleted: "+d.Deleted)
				}
			}
		}
		printList(out, "Deleted Images:", removed)
	}
	n, err := cl.PruneImages(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	freed += n
	t, err := cl.PruneTemplates(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	freed += t.SpaceReclaimed
	return freed, errors.Join(errs...)
}

func printList(w io.Writer, title string, items []string) {
	if len(items) == 0 {
		return
	}
	fmt.Fprintln(w, title)
	for _, it := range items {
		fmt.Fprintln(w, it)
	}
	fmt.Fprintln(w)
}

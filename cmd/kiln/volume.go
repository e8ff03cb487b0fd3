package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/volume"
)

// volumeCommands are `kiln volume create|ls|inspect|rm|prune`.
func volumeCommands(g *globals) *cobra.Command {
	group := &cobra.Command{Use: "volume", Short: "Manage named volumes: disks that keep a VM's data across rm and run"}
	group.AddCommand(newVolumeCreateCmd(g), newVolumeLsCmd(g), newVolumeInspectCmd(g), newVolumeRmCmd(g), newVolumePruneCmd(g))
	return group
}

func newVolumeCreateCmd(g *globals) *cobra.Command {
	var size string
	var labels, labelFiles []string
	c := &cobra.Command{
		Use:   "create [--size SIZE] [--label K=V] NAME",
		Short: "Create a named volume (a sparse ext4 disk image under the kiln root)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mib := 0
			if size != "" {
				var err error
				if mib, err = options.ParseMemory(size); err != nil || mib == 0 {
					return errdefs.Invalid(fmt.Sprintf("invalid volume size %q: want a size like 10g or 512m, at least %dm", size, volume.MinSizeMiB))
				}
			}
			if err := options.ValidateVolumeName(args[0]); err != nil {
				return err
			}
			lm, err := readLabels(labels, labelFiles)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			v, err := cl.CreateVolumeWith(ctx, api.VolumeCreateRequest{Name: args[0], SizeMiB: mib, Labels: lm})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), v.Name)
			return nil
		},
	}
	c.Flags().StringVar(&size, "size", "", "size of the volume, e.g. 1g or 512m (default 10g; the disk image is sparse)")
	c.Flags().StringArrayVarP(&labels, "label", "l", nil, "set a label, KEY=VALUE (repeatable)")
	c.Flags().StringArrayVar(&labelFiles, "label-file", nil, "read labels from a file, a KEY=VALUE per line")
	return c
}

// readLabels reads --label-file files, then --label values over them.
func readLabels(labels, files []string) (map[string]string, error) {
	var out map[string]string
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("reading label file: %w", err)
		}
		out, err = options.ParseLabelFile(out, f, name)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return options.ParseLabels(out, labels)
}

func newVolumeLsCmd(g *globals) *cobra.Command {
	var quiet bool
	var filters []string
	c := &cobra.Command{
		Use:     "ls [-q] [--filter KEY=VALUE]",
		Aliases: []string{"list"},
		Short:   "List named volumes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			match, err := parseVolumeFilters(filters)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			all, err := cl.Volumes(ctx)
			if err != nil {
				return err
			}
			var vs []api.Volume
			for _, v := range all {
				if match(v) {
					vs = append(vs, v)
				}
			}
			out := cmd.OutOrStdout()
			if quiet {
				for _, v := range vs {
					fmt.Fprintln(out, v.Name)
				}
				return nil
			}
			writeVolumeTable(out, vs)
			return nil
		},
	}
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print volume names only")
	c.Flags().StringArrayVarP(&filters, "filter", "f", nil, "filter, as docker's: name=NAME, label=KEY[=VALUE], dangling=true|false")
	return c
}

// parseVolumeFilters parses volume ls's --filter KEY=VALUE; values of one
// key match any, keys all.
func parseVolumeFilters(fs []string) (func(api.Volume) bool, error) {
	want := map[string][]string{}
	for _, f := range fs {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k != "name" && k != "label" && k != "dangling" || k == "dangling" && v != "true" && v != "false" {
			return nil, errdefs.Invalid(fmt.Sprintf("invalid filter %q: use name=NAME, label=KEY[=VALUE] or dangling=true|false", f))
		}
		want[k] = append(want[k], v)
	}
	return func(vol api.Volume) bool {
		for k, vals := range want {
			ok := false
			for _, val := range vals {
				switch k {
				case "name":
					ok = ok || strings.Contains(vol.Name, val)
				case "label":
					lk, lv, hasValue := strings.Cut(val, "=")
					got, has := vol.Labels[lk]
					ok = ok || has && (!hasValue || got == lv)
				case "dangling":
					ok = ok || (len(vol.UsedBy) == 0) == (val == "true")
				}
			}
			if !ok {
				return false
			}
		}
		return true
	}, nil
}

func writeVolumeTable(w io.Writer, vs []api.Volume) {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tUSED ON HOST\tUSED BY")
	for _, v := range vs {
		users := "-"
		if len(v.UsedBy) > 0 {
			users = strings.Join(v.UsedBy, ",")
		}
		if v.AttachedTo != "" {
			users += " (running: " + v.AttachedTo + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Name, options.FormatMiB(v.SizeMiB), humanBytes(v.UsedBytes), users)
	}
	tw.Flush()
}

// humanBytes formats a byte count as docker does (1.5MB, 10GB).
func humanBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.3g%cB", float64(n)/float64(div), "kMGTPE"[exp])
}

func newVolumeInspectCmd(g *globals) *cobra.Command {
	return inspectCmd(g, "VOLUME", "Show named volumes (size, bytes used on the host, disk path, the VMs that use them), as JSON or through a Go template",
		func(cl *client.Client) func(context.Context, string) (api.Volume, error) { return cl.InspectVolume })
}

func newVolumeRmCmd(g *globals) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:     "rm [-f] NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove named volumes and their data",
		Long: `Remove named volumes and their data. As in docker, a volume that any VM refers
to (running or not) is not removed, even with -f: remove the VM first. -f only
makes a volume that does not exist no error.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			failed := false
			for _, a := range args {
				err := cl.RemoveVolume(ctx, a)
				if err != nil && !(force && errors.Is(err, errdefs.ErrNotFound)) {
					fmt.Fprintf(cmd.ErrOrStderr(), "kiln: %v\n", err)
					failed = true
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), a)
			}
			if failed {
				return &exitCode{exitKilnError}
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "no error for volumes that do not exist")
	return c
}

func newVolumePruneCmd(g *globals) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "prune [-f]",
		Short: "Remove every volume no VM refers to",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !force {
				return errdefs.Invalid("prune removes every volume no VM refers to, with its data: give -f to confirm")
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			r, err := cl.PruneVolumes(ctx)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, n := range r.Removed {
				fmt.Fprintln(out, n)
			}
			fmt.Fprintf(out, "Total reclaimed space: %s\n", humanBytes(r.SpaceReclaimed))
			return nil
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "do not ask for confirmation (required: kiln does not prompt)")
	return c
}

// parseMountFlags parses run's -v and --mount values and checks them
// together (targets, names, paths), so that bad input fails before
// anything is created.
func parseMountFlags(volumes, mounts []string) ([]options.Mount, error) {
	var out []options.Mount
	for _, v := range volumes {
		m, err := options.ParseVolumeFlag(v)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	for _, v := range mounts {
		m, err := options.ParseMountFlag(v)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	options.CleanMounts(out)
	if err := options.ValidateMounts(out); err != nil {
		return nil, err
	}
	return out, nil
}

package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/kernel"
)

func newKernelCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "kernel", Short: "Manage guest kernels"}
	c.AddCommand(newKernelBuildCmd(g), newKernelImportCmd(g), newKernelLsCmd(g), newKernelRmCmd(g))
	return c
}

func newKernelBuildCmd(g *globals) *cobra.Command {
	var o kernel.BuildOptions
	var quiet, verbose bool
	c := &cobra.Command{
		Use:   "build",
		Short: "Build the guest kernel from Debian's linux-source-6.1 with kiln's microVM config",
		Long: `Build a guest kernel from Debian's linux-source-6.1 tarball with kiln's
microVM config fragment on top of tinyconfig. The result is cached by source
version and fragment: when nothing changed, this returns at once.

A build takes minutes (about 5 on 2 cores). It says on stderr what it is doing
and how far it is, on a terminal as one line kept up to date, otherwise as a
line every 10 seconds; the whole output of make and the compiler goes to
<root>/kernels/NAME.build.log, whose last lines a failed build shows.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if quiet && verbose {
				return errdefs.Invalid("give --quiet or --verbose, not both")
			}
			switch {
			case verbose:
				o.Log = cmd.ErrOrStderr()
			case !quiet:
				o.Progress = cmd.ErrOrStderr()
				o.Redraw = isTTY(o.Progress)
			}
			k, built, err := kernel.NewStore(g.root).Build(cmd.Context(), o)
			if err != nil {
				return err
			}
			state := "up to date"
			if built {
				state = "built"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "kernel %s %s: %s (%s)\n", k.Name, state, k.Path, k.Origin)
			return nil
		},
	}
	c.Flags().StringVar(&o.Name, "name", kernel.DefaultName, "name to store the kernel under")
	c.Flags().StringVar(&o.Source, "source", kernel.DefaultSource, "kernel source tarball")
	c.Flags().IntVarP(&o.Jobs, "jobs", "j", 0, "parallel build jobs (default: one per CPU)")
	c.Flags().BoolVar(&o.Force, "force", false, "rebuild even when the cached kernel is up to date")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "show nothing while building (a failure still shows the log's last lines)")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "show the whole output of make and the compiler instead of the progress")
	return c
}

func newKernelImportCmd(g *globals) *cobra.Command {
	var o kernel.ImportOptions
	c := &cobra.Command{
		Use:   "import [flags] PATH",
		Short: "Import a kernel image (vmlinux or bzImage), with the modules it needs",
		Long: `Import a kernel image, e.g. Debian's /boot/vmlinuz-*-cloud-amd64. With
--modules (that kernel's /lib/modules/<version>), kiln puts the modules the guest
needs (virtio-mmio, block, net, console, filesystems) and their dependencies into
the initramfs, and kiln-init loads them in dependency order.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Path = args[0]
			k, err := kernel.NewStore(g.root).Import(o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "kernel %s imported: %s (%d modules)\n", k.Name, k.Path, len(k.Modules))
			return nil
		},
	}
	c.Flags().StringVar(&o.Name, "name", kernel.DefaultName, "name to store the kernel under")
	c.Flags().StringVar(&o.ModulesDir, "modules", "", "the kernel's module directory (/lib/modules/<version>)")
	c.Flags().StringVar(&o.Config, "config", "", "the kernel's build config (default: config-<version> beside a vmlinuz-<version>)")
	return c
}

func newKernelLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List guest kernels",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ks, err := kernel.NewStore(g.root).List()
			if err != nil {
				return err
			}
			printKernels(cmd.OutOrStdout(), ks)
			return nil
		},
	}
}

func printKernels(w io.Writer, ks []*kernel.Kernel) {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tMODULES\tCREATED\tORIGIN")
	for _, k := range ks {
		fmt.Fprintf(tw, "%s\t%.1fMB\t%d\t%s\t%s\n", k.Name, float64(k.Size)/1e6, len(k.Modules), k.Created.Format("2006-01-02 15:04"), k.Origin)
	}
	tw.Flush()
}

func newKernelRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a guest kernel",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := kernel.NewStore(g.root).Remove(args[0]); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), args[0])
			return nil
		},
	}
}

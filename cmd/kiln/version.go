package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/buildinfo"
	"kiln.dev/kiln/internal/daemon"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
)

// versionInfo is what `kiln version --format json` prints.
type versionInfo struct {
	Client clientVersion `json:"client"`
	// Server is the daemon's answer; absent when none runs for the root.
	Server *api.Info `json:"server,omitempty"`
	// Error says why the daemon did not answer.
	Error string `json:"error,omitempty"`
}

type clientVersion struct {
	Version    string `json:"version"`
	APIVersion string `json:"apiVersion"`
	BuildID    string `json:"buildID,omitempty"`
	Commit     string `json:"commit,omitempty"`
	BuiltAt    string `json:"builtAt,omitempty"`
	GoVersion  string `json:"goVersion"`
	OSArch     string `json:"osArch"`
}

func newVersionCmd(g *globals) *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "version [--format json]",
		Short: "Show the version of kiln's CLI and of the root's daemon",
		Long: `Show the CLI's build and the daemon's (API version, build, VM monitor,
default kernel, accelerator). Like docker version it does not start a
daemon: with none running for the root it shows the CLI's side and says so.
When the two builds differ it warns: restart the daemon to run this build.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "" && format != "json" {
				return errdefs.Invalid(fmt.Sprintf("invalid --format %q: use json", format))
			}
			b := buildinfo.Self()
			v := versionInfo{Client: clientVersion{Version: b.Version(), APIVersion: api.Version, BuildID: b.BuildID,
				Commit: b.Commit, BuiltAt: b.BuiltAt, GoVersion: b.GoVersion, OSArch: b.OSArch}}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			info, err := client.New(daemon.SocketPath(g.root)).Info(ctx)
			if err != nil {
				v.Error = err.Error()
			} else {
				v.Server = &info
			}
			out := cmd.OutOrStdout()
			if format == "json" {
				if err := printJSON(out, v); err != nil {
					return err
				}
			} else {
				printVersion(out, v)
			}
			if v.Server != nil {
				if w := buildMismatch(b.BuildID, *v.Server, g.root); w != "" {
					fmt.Fprintln(cmd.ErrOrStderr(), "kiln: warning: "+w)
				}
				return nil
			}
			return fmt.Errorf("no daemon runs for %s (any other kiln command starts one)", g.root)
		},
	}
	c.Flags().StringVarP(&format, "format", "f", "", "print as json")
	return c
}

func printVersion(w io.Writer, v versionInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	c := v.Client
	fmt.Fprintf(tw, "Client:\n Version:\t%s\n API version:\t%s\n Build:\t%s\n Go version:\t%s\n OS/Arch:\t%s\n",
		c.Version, c.APIVersion, orNone(c.BuildID), c.GoVersion, c.OSArch)
	if c.BuiltAt != "" {
		fmt.Fprintf(tw, " Committed:\t%s\n", c.BuiltAt)
	}
	if s := v.Server; s != nil {
		ver := buildinfo.VersionOf(s.Commit)
		fmt.Fprintf(tw, "\nServer:\n Version:\t%s\n API version:\t%s\n Build:\t%s\n Go version:\t%s\n PID:\t%d\n Root:\t%s\n VM monitor:\t%s\n Default kernel:\t%s\n Accelerator:\t%s\n",
			ver, s.Version, orNone(s.BuildID), orNone(s.GoVersion), s.PID, s.Root, orNone(s.Monitor), orNone(s.Kernel), orNone(s.Accel))
	} else {
		fmt.Fprintf(tw, "\nServer:\n (none running: %s)\n", v.Error)
	}
	tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

// buildMismatch says how the daemon's build differs from this CLI's
// (mine), or "" when they are the same: another API version, a daemon
// too old to say its build, or another build.
func buildMismatch(mine string, info api.Info, root string) string {
	restart := fmt.Sprintf("stop it (kill %d; VMs keep running) and the next command starts this build", info.PID)
	switch {
	case info.Version != api.Version:
		return fmt.Sprintf("the daemon for %s (pid %d) speaks API %s, this kiln %s: %s", root, info.PID, info.Version, api.Version, restart)
	case info.BuildID == "":
		return fmt.Sprintf("the daemon for %s (pid %d) is an older build than this kiln's (it does not say its build): %s", root, info.PID, restart)
	case mine != "" && info.BuildID != mine:
		return fmt.Sprintf("the daemon for %s (pid %d) is build %s, this kiln is build %s: %s", root, info.PID, info.BuildID, mine, restart)
	}
	return ""
}

// printJSON writes v as indented JSON: what --format json prints.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newInfoCmd(g *globals) *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "info [--format json]",
		Short: "Show the daemon's view of the host: VMs by state, images, accelerator, confinement, cgroups, free space",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "" && format != "json" {
				return errdefs.Invalid(fmt.Sprintf("invalid --format %q: use json", format))
			}
			ctx := context.Background()
			c, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			info, err := c.Info(ctx)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if format == "json" {
				return printJSON(out, info)
			}
			templates := "off (every VM boots its kernel)"
			if info.Templates {
				templates = "on (VMs start from booted templates)"
			}
			tw := tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
			fmt.Fprintf(tw, "VMs:\t%d\n Running:\t%d\n Paused:\t%d\n Stopped:\t%d\nImages:\t%d\n", info.VMs, info.Running, info.Paused, info.VMs-info.Running-info.Paused, info.Images)
			ver := buildinfo.VersionOf(info.Commit)
			fmt.Fprintf(tw, "Server version:\t%s (API %s, build %s)\n", ver, info.Version, orNone(info.BuildID))
			fmt.Fprintf(tw, "Root:\t%s (%s free)\n", info.Root, disk.HumanBytes(info.FreeBytes))
			fmt.Fprintf(tw, "Accelerator:\t%s\nVM monitor:\t%s\nDefault kernel:\t%s\nTemplates:\t%s\n", orNone(info.Accel), orNone(info.Monitor), orNone(info.Kernel), templates)
			fmt.Fprintf(tw, "Confinement:\t%s\nCgroups:\t%s\n", orNone(info.Confinement), orNone(info.Cgroup))
			fmt.Fprintf(tw, "CPUs:\t%d\nTotal memory:\t%s\n", info.HostCPUs, disk.HumanBytes(info.HostMemory))
			return tw.Flush()
		},
	}
	c.Flags().StringVarP(&format, "format", "f", "", "print as json")
	return c
}

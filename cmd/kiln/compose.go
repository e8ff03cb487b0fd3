package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/compose"
	"kiln.dev/kiln/internal/errdefs"
)

// composeFlags are docker compose's project flags.
type composeFlags struct {
	files    []string
	name     string
	dir      string
	profiles []string
	envFiles []string
}

func newComposeCmd(g *globals) *cobra.Command {
	f := &composeFlags{}
	c := &cobra.Command{
		Use:   "compose",
		Short: "Run a compose file's services as VMs (docker compose's verbs)",
		Long: `Run the services of a compose file (compose.yaml, docker-compose.yml, … in
the current directory, or -f FILE, several merged in order) as kiln VMs, as
docker compose runs them as containers: VMs named PROJECT-SERVICE-N with
compose's labels, networks PROJECT_NETWORK (bridge networks, where services
find each other by service name), volumes PROJECT_VOLUME. Keys kiln cannot
honour are warned about once each; keys whose dropping would change a
service's meaning (privileged, network_mode: host, devices, …) are refused.`,
	}
	pf := c.PersistentFlags()
	pf.StringArrayVar(&f.files, "file", nil, "compose file, -f before the verb (repeatable: later ones merge over earlier ones)")
	pf.StringVarP(&f.name, "project-name", "p", "", "project name (default: $COMPOSE_PROJECT_NAME, the file's name:, else the directory's)")
	pf.StringVar(&f.dir, "project-directory", "", "where relative paths start (default: the first file's directory)")
	pf.StringArrayVar(&f.profiles, "profile", nil, "a profile to enable (repeatable)")
	pf.StringArrayVar(&f.envFiles, "env-file", nil, "environment file for interpolation (default: .env in the project directory)")
	c.AddCommand(
		newComposeUpCmd(g, f), newComposeDownCmd(g, f), newComposePsCmd(g, f), newComposeLogsCmd(g, f),
		newComposeExecCmd(g, f), newComposeConfigCmd(f),
		newComposeVerbCmd(g, f, "stop", "Stop services", (*compose.Runner).Stop),
		newComposeVerbCmd(g, f, "start", "Start services' stopped VMs", (*compose.Runner).Start),
		newComposeVerbCmd(g, f, "restart", "Restart services", (*compose.Runner).Restart),
	)
	return c
}

// composeFileFlags spells docker compose's -f FILE, given between
// "compose" and its verb, --file: after the verb, -f is the verb's own
// (logs -f follows), as with docker compose.
func composeFileFlags(args []string) []string {
	i := 0
	for i < len(args) && strings.HasPrefix(args[i], "-") {
		if args[i] == "--root" || args[i] == "--log-level" {
			i++
		}
		i++
	}
	if i >= len(args) || args[i] != "compose" {
		return args
	}
	out := append([]string{}, args[:i+1]...)
	j := i + 1
	for ; j < len(args) && strings.HasPrefix(args[j], "-"); j++ {
		a := args[j]
		switch {
		case a == "-f":
			a = "--file"
		case strings.HasPrefix(a, "-f") && !strings.HasPrefix(a, "--"):
			a = "--file=" + strings.TrimPrefix(strings.TrimPrefix(a, "-f"), "=")
		}
		out = append(out, a)
		if (a == "--file" || a == "-p" || a == "--project-name" || a == "--project-directory" || a == "--profile" || a == "--env-file") && j+1 < len(args) {
			j++
			out = append(out, args[j])
		}
	}
	return append(out, args[j:]...)
}

// load reads the project, printing kiln's warnings about it.
func (f *composeFlags) load(cmd *cobra.Command) (*compose.Project, error) {
	p, err := compose.Load(cmd.Context(), compose.LoadOptions{
		Files: f.files, Name: f.name, WorkingDir: f.dir, Profiles: f.profiles, EnvFiles: f.envFiles,
	})
	if err != nil {
		return nil, err
	}
	for _, w := range p.Warnings {
		fmt.Fprintf(cmd.ErrOrStderr(), "kiln: warning: %s\n", w)
	}
	return p, nil
}

// runner loads the project and connects to the daemon.
func (f *composeFlags) runner(cmd *cobra.Command, g *globals) (*compose.Project, *compose.Runner, error) {
	p, err := f.load(cmd)
	if err != nil {
		return nil, nil, err
	}
	cl, err := connect(cmd.Context(), g, cmd.ErrOrStderr())
	if err != nil {
		return nil, nil, err
	}
	return p, &compose.Runner{Kiln: cl, Out: cmd.ErrOrStderr()}, nil
}

func newComposeUpCmd(g *globals, f *composeFlags) *cobra.Command {
	var detach bool
	c := &cobra.Command{
		Use:   "up [-d] [SERVICE...]",
		Short: "Create and start the project's VMs (again only where their service changed)",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, r, err := f.runner(cmd, g)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if err := r.Up(ctx, p, args...); err != nil {
				return err
			}
			if detach {
				return nil
			}
			// Attached: every VM's output, prefixed, until Ctrl-C, which
			// stops the project, as docker compose up does.
			sctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
			defer stop()
			vms, err := r.VMs(ctx, p.Name, args...)
			if err != nil {
				return err
			}
			followLogs(sctx, r.Kiln, vms, client.LogOptions{Follow: true, Tail: -1}, cmd.OutOrStdout())
			if sctx.Err() != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "Gracefully stopping...")
				return r.Stop(context.Background(), p, args...)
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&detach, "detach", "d", false, "start the VMs and return")
	return c
}

func newComposeDownCmd(g *globals, f *composeFlags) *cobra.Command {
	var volumes bool
	c := &cobra.Command{
		Use:   "down [-v]",
		Short: "Stop and remove the project's VMs and networks (-v: and its volumes)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, r, err := f.runner(cmd, g)
			if err != nil {
				return err
			}
			return r.Down(cmd.Context(), p, volumes)
		},
	}
	c.Flags().BoolVarP(&volumes, "volumes", "v", false, "remove the project's named volumes too")
	return c
}

func newComposeVerbCmd(g *globals, f *composeFlags, verb, short string, fn func(*compose.Runner, context.Context, *compose.Project, ...string) error) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " [SERVICE...]",
		Short: short,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, r, err := f.runner(cmd, g)
			if err != nil {
				return err
			}
			return fn(r, cmd.Context(), p, args...)
		},
	}
}

func newComposePsCmd(g *globals, f *composeFlags) *cobra.Command {
	var all, quiet bool
	c := &cobra.Command{
		Use:   "ps [-a] [-q] [SERVICE...]",
		Short: "List the project's VMs",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, r, err := f.runner(cmd, g)
			if err != nil {
				return err
			}
			vms, err := r.VMs(cmd.Context(), p.Name, args...)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if quiet {
				for _, v := range vms {
					if all || v.State.Running {
						fmt.Fprintln(out, v.ID)
					}
				}
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "NAME\tIMAGE\tSERVICE\tSTATUS\tPORTS")
			for _, v := range vms {
				if !all && !v.State.Running {
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Name, v.Config.Image, v.Config.Labels[compose.LabelService], statusText(v), portsText(v))
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "show stopped VMs too")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "only print IDs")
	return c
}

// portsText is a VM's published ports as docker compose ps shows them.
func portsText(v api.VM) string {
	var out []string
	for _, p := range v.Ports {
		ip := p.HostIP
		if ip == "" {
			ip = "0.0.0.0"
		}
		out = append(out, fmt.Sprintf("%s:%d->%d/%s", ip, p.HostPort, p.GuestPort, p.Protocol))
	}
	return strings.Join(out, ", ")
}

func newComposeLogsCmd(g *globals, f *composeFlags) *cobra.Command {
	var follow bool
	var tail int
	c := &cobra.Command{
		Use:   "logs [-f] [--tail N] [SERVICE...]",
		Short: "Show the output of the project's VMs, each line prefixed with its VM",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, r, err := f.runner(cmd, g)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			vms, err := r.VMs(ctx, p.Name, args...)
			if err != nil {
				return err
			}
			followLogs(ctx, r.Kiln, vms, client.LogOptions{Follow: follow, Tail: tail}, cmd.OutOrStdout())
			return nil
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output")
	c.Flags().IntVarP(&tail, "tail", "n", -1, "lines from the end of each VM's output (default all)")
	return c
}

// followLogs writes the VMs' output to w, each line prefixed "NAME | ",
// until each is done (or ctx).
func followLogs(ctx context.Context, cl *client.Client, vms []api.VM, o client.LogOptions, w io.Writer) {
	width := 0
	for _, v := range vms {
		width = max(width, len(v.Name))
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, v := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prefix := fmt.Sprintf("%-*s | ", width, v.Name)
			_ = cl.Logs(ctx, v.ID, o, func(e api.LogEntry) error {
				mu.Lock()
				defer mu.Unlock()
				line := e.Line
				if !strings.HasSuffix(line, "\n") {
					line += "\n"
				}
				_, err := io.WriteString(w, prefix+line)
				return err
			})
		}()
	}
	wg.Wait()
}

func newComposeExecCmd(g *globals, f *composeFlags) *cobra.Command {
	var noTTY bool
	var index int
	var env []string
	var user, workdir string
	c := &cobra.Command{
		Use:   "exec [-T] [--index N] [-e K=V] [-u USER] [-w DIR] SERVICE COMMAND [ARG...]",
		Short: "Run a command in a service's running VM (a terminal when stdin is one, unless -T)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, r, err := f.runner(cmd, g)
			if err != nil {
				return err
			}
			s, err := p.GetService(args[0])
			if err != nil {
				return errdefs.Invalid(fmt.Sprintf("no such service: %s (the project has %v)", args[0], p.ServiceNames()))
			}
			in, _ := cmd.InOrStdin().(*os.File)
			tty := !noTTY && in != nil && isTerminal(in)
			cfg := api.ExecConfig{Cmd: args[1:], Env: expandEnv(env), User: user, WorkingDir: workdir, Tty: tty, Stdin: true}
			return runExec(cmd, r.Kiln, compose.VMName(p.Name, s, index), cfg)
		},
	}
	c.Flags().SetInterspersed(false)
	c.Flags().BoolVarP(&noTTY, "no-TTY", "T", false, "no pseudo-terminal")
	c.Flags().IntVar(&index, "index", 1, "which replica")
	c.Flags().StringArrayVarP(&env, "env", "e", nil, "set an environment variable")
	c.Flags().StringVarP(&user, "user", "u", "", "user to run as")
	c.Flags().StringVarP(&workdir, "workdir", "w", "", "working directory in the guest")
	return c
}

func newComposeConfigCmd(f *composeFlags) *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "config [--format yaml|json]",
		Short: "Print the project as kiln reads it: merged, interpolated, normalized",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := f.load(cmd)
			if err != nil {
				return err
			}
			var b []byte
			switch format {
			case "yaml", "":
				b, err = p.MarshalYAML()
			case "json":
				b, err = p.MarshalJSON()
			default:
				return errdefs.Invalid(fmt.Sprintf("invalid --format %q: want yaml or json", format))
			}
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	c.Flags().StringVar(&format, "format", "yaml", "yaml or json")
	return c
}

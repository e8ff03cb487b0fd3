package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
)

func vmCommands(g *globals) []*cobra.Command {
	return []*cobra.Command{
		newPsCmd(g), newInspectCmd(g), newLogsCmd(g), newStopCmd(g), newStartCmd(g),
		newRestartCmd(g), newKillCmd(g), newRmCmd(g), newWaitCmd(g), newEventsCmd(g),
		newRenameCmd(g), newPauseCmd(g), newUnpauseCmd(g), newUpdateCmd(g),
	}
}

func newPauseCmd(g *globals) *cobra.Command {
	return eachVM(g, "pause VM...", "Freeze running VMs' guests (vCPUs and clock stop; memory and devices stay)", func(ctx context.Context, cl *client.Client, ref string) (string, error) {
		return ref, cl.Pause(ctx, ref)
	})
}

func newUnpauseCmd(g *globals) *cobra.Command {
	return eachVM(g, "unpause VM...", "Let paused VMs' guests run again", func(ctx context.Context, cl *client.Client, ref string) (string, error) {
		return ref, cl.Unpause(ctx, ref)
	})
}

func newRenameCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rename VM NEW_NAME",
		Short: "Rename a VM (its guest's hostname stays, as docker's does)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := context.Background()
			c, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return c.Rename(ctx, args[0], args[1])
		},
	}
}

// psRow is one line of `kiln ps`, and what --format templates see.
type psRow struct {
	ID       string `json:"ID"`
	Name     string `json:"Name"`
	Image    string `json:"Image"` // the image, or the program's host path
	Command  string `json:"Command"`
	Created  string `json:"Created"`
	Status   string `json:"Status"`
	State    string `json:"State"`
	ExitCode int    `json:"ExitCode"`
	Restarts int    `json:"Restarts"`
}

func newPsCmd(g *globals) *cobra.Command {
	var all, quiet bool
	var format string
	var filters []string
	c := &cobra.Command{
		Use:     "ps",
		Aliases: []string{"ls", "list"},
		Short:   "List VMs (running ones; -a for all)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := parseFilters(filters)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			vms, err := cl.List(ctx)
			if err != nil {
				return err
			}
			if err := filter.Resolve(vms); err != nil {
				return err
			}
			var rows []psRow
			for _, v := range vms {
				if !all && !v.State.Running && len(filters) == 0 {
					continue
				}
				if !filter.Match(v) {
					continue
				}
				rows = append(rows, rowOf(v))
			}
			return printRows(cmd.OutOrStdout(), rows, quiet, format)
		},
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "show every VM, not only running ones")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "only print IDs")
	c.Flags().StringVar(&format, "format", "", "output format: table, json, or a Go template like '{{.Name}} {{.State}}'")
	c.Flags().StringArrayVarP(&filters, "filter", "f", nil, "filter, as docker's: state=running|exited|…, name=NAME, id=PREFIX, label=KEY[=VALUE], ancestor=IMAGE, exited=CODE, health=healthy|unhealthy|starting|none, network=NAME, volume=NAME|PATH, publish=PORT[/PROTO], expose=PORT[-PORT][/PROTO], before=VM, since=VM")
	return c
}

// psFilterKeys are the keys ps's --filter knows, as docker's.
var psFilterKeys = []string{"state", "status", "name", "id", "label", "ancestor", "exited", "health", "network", "volume", "publish", "expose", "before", "since"}

// psFilter is ps's --filter: several values of one key match any of
// them, several keys must all match, as docker's. before and since name
// VMs, which Resolve looks up among all.
type psFilter struct {
	want map[string][]string
	// before and since are the creation times of the VMs they name.
	before, since []time.Time
}

// parseFilters checks --filter KEY=VALUE values.
func parseFilters(fs []string) (*psFilter, error) {
	f := &psFilter{want: map[string][]string{}}
	for _, kv := range fs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !slices.Contains(psFilterKeys, k) {
			return nil, errdefs.Invalid(fmt.Sprintf("invalid filter %q: use KEY=VALUE with KEY one of %s", kv, strings.Join(psFilterKeys, ", ")))
		}
		switch k {
		case "exited":
			if _, err := strconv.Atoi(v); err != nil {
				return nil, errdefs.Invalid(fmt.Sprintf("invalid filter %q: exited takes an exit code", kv))
			}
		case "publish", "expose":
			if _, _, _, err := parsePortFilter(v); err != nil {
				return nil, errdefs.Invalid(fmt.Sprintf("invalid filter %q: want PORT[-PORT][/tcp|/udp]", kv))
			}
		case "before", "since":
			if v == "" {
				return nil, errdefs.Invalid(fmt.Sprintf("invalid filter %q: name a VM", kv))
			}
		case "status":
			k = "state"
		}
		f.want[k] = append(f.want[k], v)
	}
	return f, nil
}

// Resolve looks up the VMs before and since name among all.
func (f *psFilter) Resolve(all []api.VM) error {
	for _, k := range []string{"before", "since"} {
		for _, ref := range f.want[k] {
			i := slices.IndexFunc(all, func(v api.VM) bool { return v.Name == ref || strings.HasPrefix(v.ID, ref) })
			if i < 0 {
				return fmt.Errorf("filter %s=%s: no such VM: %s: %w", k, ref, ref, errdefs.ErrNotFound)
			}
			if k == "before" {
				f.before = append(f.before, all[i].Created)
			} else {
				f.since = append(f.since, all[i].Created)
			}
		}
	}
	return nil
}

// Match tells whether v passes the filter.
func (f *psFilter) Match(v api.VM) bool {
	for k, vals := range f.want {
		ok := false
		for i, val := range vals {
			switch k {
			case "before":
				ok = ok || i < len(f.before) && v.Created.Before(f.before[i])
			case "since":
				ok = ok || i < len(f.since) && v.Created.After(f.since[i])
			default:
				ok = ok || matchFilter(v, k, val)
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// parsePortFilter reads PORT[-PORT][/PROTO] (tcp by default).
func parsePortFilter(s string) (lo, hi int, proto string, err error) {
	ports, proto, _ := strings.Cut(s, "/")
	if proto == "" {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" {
		return 0, 0, "", fmt.Errorf("protocol %q", proto)
	}
	a, b, isRange := strings.Cut(ports, "-")
	if lo, err = strconv.Atoi(a); err != nil || lo < 1 || lo > 65535 {
		return 0, 0, "", fmt.Errorf("port %q", a)
	}
	hi = lo
	if isRange {
		if hi, err = strconv.Atoi(b); err != nil || hi < lo || hi > 65535 {
			return 0, 0, "", fmt.Errorf("port %q", b)
		}
	}
	return lo, hi, proto, nil
}

// matchFilter is one --filter KEY=VAL against a VM.
func matchFilter(v api.VM, k, val string) bool {
	switch k {
	case "state":
		return v.State.Status == val || val == "paused" && v.State.Paused
	case "name":
		return strings.Contains(v.Name, val)
	case "id":
		return strings.HasPrefix(v.ID, val)
	case "label":
		lk, lv, hasValue := strings.Cut(val, "=")
		got, ok := v.Config.Labels[lk]
		return ok && (!hasValue || got == lv)
	case "ancestor":
		return v.Config.Image == val || v.ImageID == val || strings.HasPrefix(v.ImageID, "sha256:"+val) ||
			!strings.Contains(val, ":") && v.Config.Image == val+":latest"
	case "exited":
		return v.State.Status == "exited" && strconv.Itoa(v.State.ExitCode) == val
	case "health":
		h := "none"
		if v.State.Health != nil {
			h = v.State.Health.Status
		}
		return h == val
	case "network":
		n := v.Config.Network
		if n == "" {
			n = "user"
		}
		return n == val
	case "volume":
		for _, m := range v.Config.Mounts {
			if m.Type == "volume" && m.Source == val || m.Target == val {
				return true
			}
		}
	case "publish", "expose":
		lo, hi, proto, err := parsePortFilter(val)
		if err != nil {
			return false
		}
		in := func(port int, p string) bool {
			if p == "" {
				p = "tcp"
			}
			return port >= lo && port <= hi && p == proto
		}
		// publish: a guest port the VM publishes; expose: one its image
		// exposes, or it publishes (docker counts both as exposed).
		for _, p := range v.Config.Ports {
			if in(p.GuestPort, p.Protocol) {
				return true
			}
		}
		if k == "expose" {
			for _, e := range v.ExposedPorts {
				ps, p, _ := strings.Cut(e, "/")
				if n, err := strconv.Atoi(ps); err == nil && in(n, p) {
					return true
				}
			}
		}
	}
	return false
}

func rowOf(v api.VM) psRow {
	cmd := strings.Join(append(append([]string{}, v.Config.Entrypoint...), v.Config.Cmd...), " ")
	if len(v.Config.Entrypoint) == 0 && v.Config.Program != "" {
		cmd = strings.TrimSpace(baseName(v.Config.Program) + " " + strings.Join(v.Config.Cmd, " "))
	}
	return psRow{
		ID: v.ID[:12], Name: v.Name, Image: imageOf(v), Command: cmd, Created: ago(v.Created) + " ago",
		Status: statusText(v), State: v.State.Status, ExitCode: v.State.ExitCode, Restarts: v.State.RestartCount,
	}
}

// imageOf is what a VM runs: its image, its program's host path, or its
// root directory.
func imageOf(v api.VM) string {
	if v.Config.Image != "" {
		return v.Config.Image
	}
	if v.Config.RootDir != "" {
		return v.Config.RootDir
	}
	return v.Config.Program
}

func baseName(p string) string {
	if i := strings.LastIndex(p, "/"); i >= 0 {
		return p[i+1:]
	}
	return p
}

// statusText reads as docker's STATUS column.
func statusText(v api.VM) string {
	s := v.State
	switch s.Status {
	case "running":
		if s.Health != nil {
			return fmt.Sprintf("Up %s (%s)", ago(s.StartedAt), healthWord(s.Health.Status))
		}
		return "Up " + ago(s.StartedAt)
	case "paused":
		return "Up " + ago(s.StartedAt) + " (Paused)"
	case "stopping":
		return "Stopping"
	case "restarting":
		return fmt.Sprintf("Restarting (%d) %s ago", s.ExitCode, ago(s.FinishedAt))
	case "exited":
		return fmt.Sprintf("Exited (%d) %s ago", s.ExitCode, ago(s.FinishedAt))
	case "created":
		return "Created"
	case "dead":
		return "Dead"
	}
	return s.Status
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d seconds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d minutes", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours", int(d.Hours()))
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

func printRows(w io.Writer, rows []psRow, quiet bool, format string) error {
	switch {
	case quiet:
		for _, r := range rows {
			fmt.Fprintln(w, r.ID)
		}
		return nil
	case format == "json":
		enc := json.NewEncoder(w)
		for _, r := range rows {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	case format != "" && format != "table":
		return execTemplate(w, format, rows)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "VM ID\tNAME\tIMAGE\tCOMMAND\tCREATED\tSTATUS")
	for _, r := range rows {
		cmd := r.Command
		if len(cmd) > 30 {
			cmd = cmd[:29] + "…"
		}
		img := r.Image
		if len(img) > 40 {
			img = "…" + img[len(img)-39:]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%q\t%s\t%s\n", r.ID, r.Name, img, cmd, r.Created, r.Status)
	}
	return tw.Flush()
}

// templateFuncs are docker's --format functions.
var templateFuncs = template.FuncMap{
	"json":  func(v any) (string, error) { b, err := json.Marshal(v); return string(b), err },
	"upper": strings.ToUpper,
	"lower": strings.ToLower,
	"title": func(s string) string {
		if s == "" {
			return s
		}
		return strings.ToUpper(s[:1]) + s[1:]
	},
	"join":  func(list []string, sep string) string { return strings.Join(list, sep) },
	"split": strings.Split,
	"truncate": func(s string, n int) string {
		if len(s) <= n {
			return s
		}
		return s[:n]
	},
	"pad": func(s string, left, right int) string {
		return strings.Repeat(" ", left) + s + strings.Repeat(" ", right)
	},
}

// tableField finds the fields a "table" template prints, for its header.
var tableField = regexp.MustCompile(`\{\{-?\s*\.(\w+)[^}]*\}\}`)

// execTemplate prints each item through a Go template, with docker's
// functions. "table TEMPLATE" prints a header of the fields' names in
// capitals and aligns the columns, as docker's --format "table …".
func execTemplate[T any](w io.Writer, format string, items []T) error {
	table := false
	if rest, ok := strings.CutPrefix(format, "table"); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
		table, format = true, strings.TrimSpace(rest)
		if format == "" {
			return errdefs.Invalid("invalid --format \"table\": give the columns, e.g. 'table {{.Name}}\\t{{.State}}'")
		}
	}
	format = strings.ReplaceAll(format, `\t`, "\t")
	format = strings.ReplaceAll(format, `\n`, "\n")
	tmpl, err := template.New("format").Funcs(templateFuncs).Parse(format)
	if err != nil {
		return errdefs.Invalid(fmt.Sprintf("invalid --format template %q: %v", format, err))
	}
	out := w
	var tw *tabwriter.Writer
	if table {
		tw = tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
		out = tw
		header := tableField.ReplaceAllStringFunc(format, func(m string) string {
			return strings.ToUpper(tableField.FindStringSubmatch(m)[1])
		})
		fmt.Fprintln(out, header)
	}
	for _, it := range items {
		if err := tmpl.Execute(out, it); err != nil {
			return fmt.Errorf("applying --format template: %w", err)
		}
		fmt.Fprintln(out)
	}
	if tw != nil {
		return tw.Flush()
	}
	return nil
}

func newInspectCmd(g *globals) *cobra.Command {
	return inspectCmd(g, "VM", "Show VMs in detail, as JSON or through a Go template ('{{.State.ExitCode}}')",
		func(cl *client.Client) func(context.Context, string) (api.VM, error) { return cl.Inspect })
}

// inspectCmd is an `inspect [--format TEMPLATE] NOUN...` command: each
// object fetched by get, printed as one JSON array or each through the
// template; the ones that cannot be fetched are reported after the others
// are printed, and make the command fail.
func inspectCmd[T any](g *globals, noun, short string, get func(*client.Client) func(context.Context, string) (T, error)) *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "inspect [--format TEMPLATE] " + noun + "...",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			items := []T{}
			var errs []error
			for _, a := range args {
				v, err := get(cl)(ctx, a)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				items = append(items, v)
			}
			out := cmd.OutOrStdout()
			if format != "" {
				if err := execTemplate(out, format, items); err != nil {
					return err
				}
			} else {
				b, _ := json.MarshalIndent(items, "", "    ")
				fmt.Fprintln(out, string(b))
			}
			return errors.Join(errs...)
		},
	}
	c.Flags().StringVarP(&format, "format", "f", "", "Go template applied to each one, e.g. '{{json .}}'")
	return c
}

func newLogsCmd(g *globals) *cobra.Command {
	var o client.LogOptions
	var tail string
	var timestamps bool
	c := &cobra.Command{
		Use:   "logs [flags] VM",
		Short: "Show a VM's output (stdout and stderr); --console for its serial console",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Tail = -1
			if tail != "all" && tail != "" {
				if _, err := fmt.Sscanf(tail, "%d", &o.Tail); err != nil || o.Tail < 0 {
					return fmt.Errorf("invalid --tail %q: want a number of lines or all", tail)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			err = cl.Logs(ctx, args[0], o, printEntry(stdout, stderr, timestamps))
			if ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
	c.Flags().BoolVarP(&o.Follow, "follow", "f", false, "keep printing output as it comes, across restarts of the VM")
	c.Flags().StringVarP(&tail, "tail", "n", "all", "only the last N lines")
	c.Flags().StringVar(&o.Since, "since", "", "only lines since a time (RFC 3339, Unix seconds) or a duration ago (10m)")
	c.Flags().StringVar(&o.Until, "until", "", "only lines before a time or a duration ago")
	c.Flags().BoolVarP(&timestamps, "timestamps", "t", false, "show each line's time")
	c.Flags().BoolVar(&o.Console, "console", false, "show the serial console (kernel and kiln-init) instead")
	return c
}

// eachVM runs fn for every named VM, printing what fn returns for each one
// done (the name, as docker does, or a result) and failing with all the
// errors met.
func eachVM(g *globals, use, short string, fn func(ctx context.Context, cl *client.Client, ref string) (string, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var errs []error
			for _, a := range args {
				out, err := fn(ctx, cl, a)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), out)
			}
			return errors.Join(errs...)
		},
	}
}

// graceOf turns a -t flag into a grace period; negative means the VM's own.
func graceOf(secs int) *time.Duration {
	if secs < 0 {
		return nil
	}
	d := time.Duration(secs) * time.Second
	return &d
}

func newStopCmd(g *globals) *cobra.Command {
	var secs int
	c := eachVM(g, "stop [-t SECONDS] VM...", "Stop VMs gracefully: the program gets its stop signal, then SIGKILL after -t seconds",
		func(ctx context.Context, cl *client.Client, ref string) (string, error) {
			return ref, cl.Stop(ctx, ref, graceOf(secs))
		})
	c.Flags().IntVarP(&secs, "time", "t", -1, "seconds to wait before killing the program (default: the VM's --time)")
	return c
}

func newStartCmd(g *globals) *cobra.Command {
	var checkpoint string
	var attachOut bool
	c := eachVM(g, "start [-a] [--checkpoint NAME] VM...", "Start stopped VMs (-a: stay with one as kiln run does; --checkpoint: resume one where its checkpoint saved it)", func(ctx context.Context, cl *client.Client, ref string) (string, error) {
		return ref, cl.StartFrom(ctx, ref, checkpoint)
	})
	c.Flags().StringVar(&checkpoint, "checkpoint", "", "resume the VM from this checkpoint (kiln checkpoint create) instead of booting it")
	c.Flags().BoolVarP(&attachOut, "attach", "a", false, "print the VM's output as it runs and exit with its exit status; Ctrl-C stops it (one VM)")
	run := c.RunE
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if checkpoint != "" {
			if len(args) > 1 {
				return errdefs.Invalid("start --checkpoint takes one VM")
			}
			if err := options.ValidateCheckpointName(checkpoint); err != nil {
				return err
			}
		}
		if attachOut {
			if len(args) != 1 || checkpoint != "" {
				return errdefs.Invalid("start -a takes one VM, and no --checkpoint")
			}
			return startAttached(cmd, g, args[0])
		}
		return run(cmd, args)
	}
	return c
}

// startAttached is start -a: it starts a created or stopped VM and stays
// with it as kiln run does; the VM is kept whatever happens.
func startAttached(cmd *cobra.Command, g *globals, ref string) error {
	ctx := context.Background()
	c, err := connect(ctx, g, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	v, err := c.Inspect(ctx, ref)
	if err != nil {
		return err
	}
	if v.State.Running || v.State.Status == "starting" {
		return fmt.Errorf("VM %s is %s: kiln logs -f %s follows it: %w", v.Name, v.State.Status, v.Name, errdefs.ErrConflict)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	return attach(ctx, c, v.ID, nil, false, time.Now(), sigs, cmd.OutOrStdout(), cmd.ErrOrStderr())
}

func newRestartCmd(g *globals) *cobra.Command {
	var secs int
	c := eachVM(g, "restart [-t SECONDS] VM...", "Stop and start VMs", func(ctx context.Context, cl *client.Client, ref string) (string, error) {
		return ref, cl.Restart(ctx, ref, graceOf(secs))
	})
	c.Flags().IntVarP(&secs, "time", "t", -1, "seconds to wait before killing the program (default: the VM's --time)")
	return c
}

func newKillCmd(g *globals) *cobra.Command {
	var sig string
	c := eachVM(g, "kill [-s SIGNAL] VM...", "Send a signal to VMs' programs (default KILL)", func(ctx context.Context, cl *client.Client, ref string) (string, error) {
		return ref, cl.Kill(ctx, ref, sig)
	})
	c.Flags().StringVarP(&sig, "signal", "s", "KILL", "signal to send (name like HUP or number)")
	return c
}

func newRmCmd(g *globals) *cobra.Command {
	var o client.RemoveOptions
	c := eachVM(g, "rm [-f] [-v] VM...", "Remove VMs (-f: also running ones, killing them; -v: their anonymous volumes too)", func(ctx context.Context, cl *client.Client, ref string) (string, error) {
		return ref, cl.Remove(ctx, ref, o)
	})
	c.Flags().BoolVarP(&o.Force, "force", "f", false, "kill and remove running VMs")
	c.Flags().BoolVarP(&o.Volumes, "volumes", "v", false, "remove the VMs' anonymous volumes (-v /path) too; named volumes stay")
	return c
}

func newWaitCmd(g *globals) *cobra.Command {
	return eachVM(g, "wait VM...", "Wait for VMs to end and print their exit codes", func(ctx context.Context, cl *client.Client, ref string) (string, error) {
		r, err := cl.Wait(ctx, ref, false, nil)
		return strconv.Itoa(r.ExitCode), err
	})
}

// eventFilterKeys are the keys events' --filter knows, as docker's (a VM
// is docker's container).
var eventFilterKeys = []string{"type", "event", "vm", "container", "label", "image"}

// parseEventFilters parses events' --filter KEY=VALUE; labels and images
// are looked up (once per VM) with lookup.
func parseEventFilters(fs []string, lookup func(id string) api.VM) (func(api.Event) bool, error) {
	want := map[string][]string{}
	for _, f := range fs {
		k, v, ok := strings.Cut(f, "=")
		if !ok || !slices.Contains(eventFilterKeys, k) {
			return nil, errdefs.Invalid(fmt.Sprintf("invalid filter %q: use KEY=VALUE with KEY one of %s", f, strings.Join(eventFilterKeys, ", ")))
		}
		if k == "container" {
			k = "vm"
		}
		want[k] = append(want[k], v)
	}
	return func(e api.Event) bool {
		for k, vals := range want {
			ok := false
			for _, val := range vals {
				switch k {
				case "type":
					ok = ok || val == "vm" || val == "container"
				case "event":
					ok = ok || e.Action == val
				case "vm":
					ok = ok || e.Name == val || strings.HasPrefix(e.ID, val)
				case "label":
					ok = ok || matchFilter(lookup(e.ID), "label", val)
				case "image":
					ok = ok || matchFilter(lookup(e.ID), "ancestor", val)
				}
			}
			if !ok {
				return false
			}
		}
		return true
	}, nil
}

// printEntry writes each log entry to stdout or stderr, as its stream
// says, after its time when timestamps.
func printEntry(stdout, stderr io.Writer, timestamps bool) func(api.LogEntry) error {
	return func(e api.LogEntry) error {
		w := stdout
		if e.Stream == "stderr" {
			w = stderr
		}
		if timestamps && !e.Time.IsZero() {
			fmt.Fprintf(w, "%s ", e.Time.Format(time.RFC3339Nano))
		}
		_, err := io.WriteString(w, e.Line)
		return err
	}
}

func newEventsCmd(g *globals) *cobra.Command {
	var since, until, format string
	var filters []string
	c := &cobra.Command{
		Use:   "events [--since T] [--until T] [--filter KEY=VALUE]",
		Short: "Stream VM events: created, started, died, restarted, stopped, killed, removed, checkpoint, template_fallback",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var cl *client.Client
			// What a VM was when last seen: a removed VM's events keep
			// matching its labels.
			seen := map[string]api.VM{}
			lookup := func(id string) api.VM {
				if v, ok := seen[id]; ok {
					return v
				}
				v, err := cl.Inspect(ctx, id)
				if err != nil {
					v = api.VM{ID: id}
				}
				seen[id] = v
				return v
			}
			match, err := parseEventFilters(filters, lookup)
			if err != nil {
				return err
			}
			if cl, err = connect(ctx, g, cmd.ErrOrStderr()); err != nil {
				return err
			}
			if vms, err := cl.List(ctx); err == nil {
				for _, v := range vms {
					seen[v.ID] = v
				}
			}
			out := cmd.OutOrStdout()
			err = cl.Events(ctx, since, until, func(e api.Event) error {
				if !match(e) {
					return nil
				}
				if format == "json" {
					return json.NewEncoder(out).Encode(e)
				}
				var attrs []string
				for k, v := range e.Attrs {
					attrs = append(attrs, k+"="+v)
				}
				a := ""
				if len(attrs) > 0 {
					a = " (" + strings.Join(attrs, ", ") + ")"
				}
				_, err := fmt.Fprintf(out, "%s vm %s %s name=%s%s\n", e.Time.Local().Format(time.RFC3339Nano), e.Action, e.ID[:12], e.Name, a)
				return err
			})
			if ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
	c.Flags().StringVar(&since, "since", "", "show events since a time (RFC 3339, Unix seconds) or a duration ago (10m)")
	c.Flags().StringVar(&until, "until", "", "stop at this time (then exit)")
	c.Flags().StringVar(&format, "format", "", "json: one JSON object per event")
	c.Flags().StringArrayVarP(&filters, "filter", "f", nil, "filter, as docker's: event=ACTION, vm=NAME|ID, label=KEY[=VALUE], image=IMAGE, type=vm")
	return c
}

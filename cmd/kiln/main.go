// Command kiln runs services as microVMs with the lifecycle of containers.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"kiln.dev/kiln/internal/jail"

	"github.com/spf13/cobra"
)

// Exit codes of kiln's own failures, as docker's: 125 when kiln itself
// fails; the program's own code otherwise.
const exitKilnError = 125

// exitCode is returned by a command that ends with a given status and has
// already said why (or has nothing to say: the program's own exit code).
type exitCode struct{ code int }

func (e *exitCode) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// globals are the flags every command shares.
type globals struct {
	root     string
	logLevel string
}

func (g *globals) logger(w io.Writer) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}

// defaultRoot is /var/lib/kiln for root and $XDG_DATA_HOME/kiln (or
// ~/.local/share/kiln) for anyone else, unless $KILN_ROOT says otherwise.
func defaultRoot() string {
	if r := os.Getenv("KILN_ROOT"); r != "" {
		return r
	}
	if os.Geteuid() == 0 {
		return "/var/lib/kiln"
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "kiln")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), fmt.Sprintf("kiln-%d", os.Geteuid()))
	}
	return filepath.Join(home, ".local", "share", "kiln")
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "kiln",
		Short:         "Run services as microVMs, with the lifecycle of containers",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.root, "root", defaultRoot(), "directory holding all of kiln's state ($KILN_ROOT)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())
	})
	root.AddCommand(newRunCmd(g), newCreateCmd(g), newPortCmd(g), newDoctorCmd(g), newKernelCmd(g), newDaemonCmd(g))
	root.AddCommand(vmCommands(g)...)
	root.AddCommand(newExecCmd(g), newCpCmd(g), newStatsCmd(g), newTopCmd(g))
	root.AddCommand(imageCommands(g)...)
	root.AddCommand(newNetworkCmd(g), newTemplateCmd(g), newVersionCmd(g), newInfoCmd(g), newComposeCmd(g), newSystemCmd(g), newAttachCmd(g))
	root.AddCommand(volumeCommands(g))
	root.AddCommand(checkpointCommands(g))
	addCompletions(root, g)
	return root
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == jail.UsernsArg {
		// Holds a user namespace for an id-mapped mount (jail.IDMapped).
		jail.Userns()
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == jail.ExecArg {
		// The jail helper: set up a VMM's jail and exec it. Nothing of the
		// CLI runs here.
		err := jail.Exec(os.Args[2:])
		fmt.Fprintln(os.Stderr, err)
		os.Exit(125)
	}
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}

func execute(args []string, stdout, stderr io.Writer) int {
	cmd := newRootCmd()
	cmd.SetArgs(composeFileFlags(args))
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	err := cmd.Execute()
	var ec *exitCode
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ec):
		return ec.code
	default:
		fmt.Fprintf(stderr, "kiln: %v\n", err)
		return exitKilnError
	}
}

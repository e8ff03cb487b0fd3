package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"kiln.dev/kiln/client"
)

// rootEnv names the kiln root the shim's daemon serves.
const rootEnv = "KILN_ROOT"

// defaultRoot is the root when $KILN_ROOT is unset: the shim runs as root,
// as containerd does.
const defaultRoot = "/var/lib/kiln"

func kilnRoot() string {
	if r := os.Getenv(rootEnv); r != "" {
		return r
	}
	return defaultRoot
}

// socketPath is the daemon's socket under root (daemon.SocketPath; the
// shim does not link the daemon in).
func socketPath(root string) string { return filepath.Join(root, "run", "kiln.sock") }

// kilnBinary is the kiln CLI the shim starts a daemon with: the one beside
// the shim's executable, else the one in $PATH.
func kilnBinary() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "kiln")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath("kiln")
	if err != nil {
		return "", fmt.Errorf("no kiln binary beside the shim or in $PATH to start a daemon with: %w", err)
	}
	return p, nil
}

// connect returns a client of the root's daemon. When none answers, it
// runs `kiln --root ROOT ps`, which starts one as the CLI always does
// (one at a time, under the root's autostart lock), and pings again.
func connect(ctx context.Context, root string) (*client.Client, error) {
	c := client.New(socketPath(root))
	err := c.Ping(ctx)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, client.ErrNoDaemon) {
		return nil, err
	}
	kiln, err := kilnBinary()
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, kiln, "--root", root, "ps")
	cmd.Env = append(os.Environ(), rootEnv+"="+root)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("starting the kiln daemon of %s with %s ps: %v: %s", root, kiln, err, strings.TrimSpace(out.String()))
	}
	if err := c.Ping(ctx); err != nil {
		return nil, fmt.Errorf("the kiln daemon of %s does not answer after %s ps started it: %w", root, kiln, err)
	}
	return c, nil
}

// hasVMs reports whether the root holds any VM (one directory each under
// vms/), whether or not a daemon runs.
func hasVMs(root string) bool {
	ents, err := os.ReadDir(filepath.Join(root, "vms"))
	return err != nil && !os.IsNotExist(err) || len(ents) > 0
}

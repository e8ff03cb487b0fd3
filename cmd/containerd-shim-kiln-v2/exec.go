package main

import (
	"encoding/json"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"kiln.dev/kiln/api"
)

// execConfig maps an exec's OCI process (JSON) to kiln's exec.
func execConfig(spec []byte, terminal, stdin bool) (api.ExecConfig, error) {
	var p specs.Process
	if err := json.Unmarshal(spec, &p); err != nil {
		return api.ExecConfig{}, fmt.Errorf("parsing the exec's process spec: %w", err)
	}
	if len(p.Args) == 0 {
		return api.ExecConfig{}, fmt.Errorf("the exec's process has no args: kiln needs the command to run")
	}
	cfg := api.ExecConfig{
		Cmd: p.Args, Env: p.Env, WorkingDir: p.Cwd,
		User:  fmt.Sprintf("%d:%d", p.User.UID, p.User.GID),
		Tty:   terminal || p.Terminal,
		Stdin: stdin,
	}
	if p.ConsoleSize != nil {
		cfg.Rows, cfg.Cols = uint16(p.ConsoleSize.Height), uint16(p.ConsoleSize.Width)
	}
	return cfg, nil
}

// Package options parses and checks the docker-style options a VM is run
// with (`kiln run`'s flags and their API form): sizes, signals, the
// environment, ulimits, restart policies, log options, volumes and mounts,
// the health check's on-failure action, and their defaults.
//
// It is a leaf: it looks at no host state and imports nothing heavier than
// the agent protocol, so both the host (CLI, daemon, runtime) and the
// guest's init (cmd/kiln-init, built static) use the same functions.
package options

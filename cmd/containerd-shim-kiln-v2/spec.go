package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/options"
)

// kernelAnnotation names the guest kernel (a kernel of the kiln root's
// store, or a path) a task's VM boots; $KILN_KERNEL when absent.
const kernelAnnotation = "dev.kiln.kernel"

// kernelEnv is the variable read when the spec has no kernelAnnotation.
const kernelEnv = "KILN_KERNEL"

// readSpec reads the OCI runtime spec of a bundle.
func readSpec(bundle string) (*specs.Spec, error) {
	p := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("reading the bundle's spec: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", p, err)
	}
	return &s, nil
}

// vmConfig maps a task's spec to the VM that runs it; rootDir is the
// host directory that becomes the VM's root.
func vmConfig(s *specs.Spec, name, rootDir string) (api.VMConfig, error) {
	cfg := api.VMConfig{
		Name:    name,
		RootDir: rootDir,
		Network: "none",
		Restart: api.RestartPolicy{Name: "no"},
	}
	p := s.Process
	if p == nil || len(p.Args) == 0 {
		return cfg, fmt.Errorf("the spec has no process.args: kiln needs the program to run")
	}
	if p.Terminal {
		return cfg, fmt.Errorf("process.terminal is true: kiln gives a VM's main program no tty (run without a tty, e.g. ctr run without -t; execs can have one)")
	}
	cfg.Entrypoint = []string{p.Args[0]}
	cfg.Cmd = append([]string{}, p.Args[1:]...)
	if len(cfg.Cmd) == 0 {
		// An empty Cmd is "none given"; nil makes that explicit.
		cfg.Cmd = nil
	}
	cfg.Env = append([]string{}, p.Env...)
	cfg.WorkingDir = p.Cwd
	cfg.User = fmt.Sprintf("%d:%d", p.User.UID, p.User.GID)
	for _, r := range p.Rlimits {
		u, err := ulimit(r)
		if err != nil {
			return cfg, err
		}
		cfg.Ulimits = append(cfg.Ulimits, u)
	}
	if l := s.Linux; l != nil {
		for _, ns := range l.Namespaces {
			if ns.Type == specs.NetworkNamespace && ns.Path != "" {
				// A namespace someone made (a pod's, set up by CNI): the
				// VM takes over its interface.
				cfg.Network = "ns:" + ns.Path
			}
		}
	}
	if l := s.Linux; l != nil && l.Resources != nil {
		if m := l.Resources.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
			mib := int((*m.Limit + 1<<20 - 1) >> 20)
			if mib < options.MinMemoryMiB {
				return cfg, fmt.Errorf("memory limit %d bytes (%d MiB) is below kiln's minimum for a VM: give at least %d MiB", *m.Limit, mib, options.MinMemoryMiB)
			}
			cfg.MemoryMiB = mib
		}
		if c := l.Resources.CPU; c != nil && c.Quota != nil && *c.Quota > 0 {
			period := uint64(100000)
			if c.Period != nil && *c.Period > 0 {
				period = *c.Period
			}
			cfg.CPUs = int((uint64(*c.Quota) + period - 1) / period)
		}
	}
	if k := s.Annotations[kernelAnnotation]; k != "" {
		cfg.Kernel = k
	} else {
		cfg.Kernel = os.Getenv(kernelEnv)
	}
	return cfg, nil
}

// ulimit maps an OCI rlimit (RLIMIT_NOFILE) to kiln's (nofile).
func ulimit(r specs.POSIXRlimit) (api.Ulimit, error) {
	name := strings.ToLower(strings.TrimPrefix(r.Type, "RLIMIT_"))
	if _, ok := agent.RlimitResources[name]; !ok || !strings.HasPrefix(r.Type, "RLIMIT_") {
		return api.Ulimit{}, fmt.Errorf("rlimit %q is not one kiln sets: use one of %s", r.Type, strings.Join(rlimitNames(), ", "))
	}
	if r.Soft > r.Hard {
		return api.Ulimit{}, fmt.Errorf("rlimit %s: soft limit %d is above hard limit %d", r.Type, r.Soft, r.Hard)
	}
	return api.Ulimit{Name: name, Soft: r.Soft, Hard: r.Hard}, nil
}

func rlimitNames() []string {
	var out []string
	for n := range agent.RlimitResources {
		out = append(out, "RLIMIT_"+strings.ToUpper(n))
	}
	slices.Sort(out)
	return out
}

// vmName is the kiln VM name of containerd's task id in namespace ns:
// "<ns>-<id>", each character kiln does not allow in a name replaced by
// '-', and a name too long for kiln cut and made unique by a hash of the
// whole.
func vmName(ns, id string) string {
	raw := ns + "-" + id
	b := []byte(raw)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !ok && (i == 0 || c != '_' && c != '.' && c != '-') {
			b[i] = '-'
		}
	}
	if !isAlnum(b[0]) {
		b = append([]byte("k"), b...)
	}
	name := string(b)
	if len(name) > 63 || name != raw {
		sum := sha256.Sum256([]byte(raw))
		suffix := "-" + hex.EncodeToString(sum[:])[:8]
		if len(name) > 63-len(suffix) {
			name = name[:63-len(suffix)]
		}
		name += suffix
	}
	return name
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

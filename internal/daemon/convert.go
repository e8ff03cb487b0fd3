package daemon

import (
	"strings"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/supervisor"
	"kiln.dev/kiln/internal/vm"
	"kiln.dev/kiln/internal/vmm"
)

// CheckConfig reports whether the daemon would refuse a create request for
// what it says, as this host's limits judge it, without looking at images,
// volumes or networks: a caller checks a request before slow work (a pull)
// it would otherwise do in vain.
func CheckConfig(c api.VMConfig) error {
	spec, _, err := fromAPI(&c)
	if err != nil {
		return err
	}
	if network.IsBridge(spec.Network) {
		// The supervisor leases a bridge VM's address when it creates the
		// VM; a request never carries one.
		spec.Attach = &network.Attachment{Network: spec.Network}
	}
	return spec.Validate(vm.ThisHost())
}

// fromAPI turns a create request into the runtime's spec and options.
// Validation happens in the runtime, which names the bad field.
func fromAPI(c *api.VMConfig) (vm.Spec, supervisor.Options, error) {
	spec := vm.Spec{
		Name:        c.Name,
		Program:     c.Program,
		Image:       c.Image,
		Mode:        c.Mode,
		Pull:        c.Pull,
		Insecure:    c.Insecure,
		DiskMiB:     c.DiskMiB,
		Entrypoint:  c.Entrypoint,
		Cmd:         c.Cmd,
		Env:         c.Env,
		WorkingDir:  c.WorkingDir,
		User:        c.User,
		MemoryMiB:   c.MemoryMiB,
		CPUs:        c.CPUs,
		Kernel:      c.Kernel,
		Accel:       vmm.Accel(c.Accel),
		BootTimeout: time.Duration(c.BootTimeout),
		Unconfined:  c.Unconfined,
		ExtraHosts:  c.ExtraHosts,
		Network:     c.Network,
		IP:          c.IP,
		Ports:       c.Ports,
		Mounts:      c.Mounts,
	}
	for _, u := range c.Ulimits {
		spec.Rlimits = append(spec.Rlimits, agent.Rlimit{Name: u.Name, Soft: u.Soft, Hard: u.Hard})
	}
	opts := supervisor.Options{
		Restart:    options.RestartPolicy{Name: c.Restart.Name, MaxRetries: c.Restart.MaxRetries},
		AutoRemove: c.AutoRemove,
		Log:        options.LogConfig{MaxSize: c.Log.MaxSize, MaxFiles: c.Log.MaxFiles},
		StopGrace:  time.Duration(c.StopTimeout) * time.Second,
	}
	if c.StopTimeout == 0 {
		opts.StopGrace = 0
	}
	spec.Healthcheck, opts.HealthOnFailure = healthFromAPI(c.Healthcheck), c.HealthOnFailure
	return spec, opts, nil
}

func toAPI(v *supervisor.View) api.VM {
	s := v.Spec
	c := api.VMConfig{
		Name: s.Name, Program: s.Program, Image: s.Image, Mode: s.Mode, Pull: s.Pull, Insecure: s.Insecure, DiskMiB: s.DiskMiB,
		Entrypoint: s.Entrypoint, Cmd: s.Cmd, Env: s.Env,
		WorkingDir: s.WorkingDir, User: s.User, MemoryMiB: s.MemoryMiB, CPUs: s.CPUs, Kernel: s.Kernel,
		Accel:       string(s.Accel),
		Restart:     api.RestartPolicy{Name: v.Options.Restart.Name, MaxRetries: v.Options.Restart.MaxRetries},
		AutoRemove:  v.Options.AutoRemove,
		Log:         api.LogConfig{MaxSize: v.Options.Log.MaxSize, MaxFiles: v.Options.Log.MaxFiles},
		StopTimeout: int(v.Options.StopGrace / time.Second),
		BootTimeout: api.Duration(s.BootTimeout),
		Unconfined:  s.Unconfined,
		ExtraHosts:  s.ExtraHosts,
		Network:     s.Network,
		IP:          s.IP,
		Ports:       s.Ports,
		Mounts:      s.Mounts,
		Healthcheck: healthConfigToAPI(s.Healthcheck), HealthOnFailure: v.Options.HealthOnFailure,
	}
	for _, r := range s.Rlimits {
		c.Ulimits = append(c.Ulimits, api.Ulimit{Name: r.Name, Soft: r.Soft, Hard: r.Hard})
	}
	r := v.Record
	return api.VM{
		ID: r.ID, Name: r.Name, Created: r.Created, Config: c, Desired: r.Desired,
		Dir: v.Dir, Accel: string(v.Accel), Kernel: v.Kernel, ImageID: s.ImageID, ExposedPorts: s.ExposedPorts,
		Ports:           v.Ports,
		NetworkSettings: networkSettings(v),
		Confinement:     confinementToAPI(v.Confinement),
		State: api.VMState{
			Status: r.Status, Running: r.Status == state.StatusRunning || r.Status == state.StatusStopping,
			PID: r.PID, ExitCode: r.ExitCode, Error: r.Error, StartedAt: r.StartedAt, FinishedAt: r.FinishedAt,
			RestartCount: r.RestartCount, BootUptime: r.BootUptime,
			OOMKilled: v.OOMKilled, Health: healthToAPI(v.Health),
		},
	}
}

func eventToAPI(e state.Event) api.Event {
	out := api.Event{Time: e.Time, ID: e.VMID, Name: e.Name, Action: e.Action}
	if e.Attrs != "" {
		out.Attrs = map[string]string{}
		for _, kv := range strings.Split(e.Attrs, ",") {
			k, v, _ := strings.Cut(kv, "=")
			out.Attrs[k] = v
		}
	}
	return out
}

func confinementToAPI(c *vm.ConfinementView) *api.Confinement {
	if c == nil {
		return nil
	}
	st := c.Status
	out := &api.Confinement{
		Jailed: c.Jailed, UID: st.UID, GID: st.GID, CapEff: st.CapEff, NoNewPrivs: st.NoNewPrivs,
		Seccomp: st.Seccomp, Namespaces: st.Namespaces, Root: st.Root,
	}
	if g := c.Cgroup; g != nil {
		out.Cgroup = &api.Cgroup{
			Version: g.Version, Paths: g.Paths, MemoryLimit: g.Limits.MemoryBytes, CPUs: g.Limits.CPUs, PidsLimit: g.Limits.Pids,
			MemoryUsage: g.Stats.MemoryBytes, Pids: g.Stats.Pids, OOMKills: g.Stats.OOMKills,
		}
	}
	return out
}

package daemon

import (
	"strings"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/supervisor"
	"kiln.dev/kiln/internal/vm"
)

// CheckConfig reports whether the daemon would refuse a create request for
// what it says, as this host's limits judge it, without looking at images,
// volumes or networks: a caller checks a request before slow work (a pull)
// it would otherwise do in vain.
func CheckConfig(c api.VMConfig) error {
	spec := vm.Spec{VMConfig: c}
	if network.IsBridge(spec.Network) {
		// The supervisor leases a bridge VM's address when it creates the
		// VM; a request never carries one.
		spec.Attach = &network.Attachment{Network: spec.Network}
	}
	return spec.Validate(vm.ThisHost())
}

// toAPI shows a VM: its request as kept (defaults filled in), and what
// kiln resolved and observes of it.
func toAPI(v *supervisor.View) api.VM {
	s, r := &v.Spec, v.Record
	return api.VM{
		ID: r.ID, Name: r.Name, Created: r.Created, Config: s.VMConfig, Desired: r.Desired,
		Dir: v.Dir, Accel: string(v.Accel), Kernel: v.Kernel, ImageID: s.ImageID, ExposedPorts: s.ExposedPorts,
		Ports:           v.Ports,
		NetworkSettings: networkSettings(v),
		Confinement:     confinementToAPI(v.Confinement),
		State: api.VMState{
			Status: r.Status, Running: r.Status == state.StatusRunning || r.Status == state.StatusPaused || r.Status == state.StatusStopping,
			Paused: r.Status == state.StatusPaused,
			PID:    r.PID, ExitCode: r.ExitCode, Error: r.Error, StartedAt: r.StartedAt, FinishedAt: r.FinishedAt,
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

package compose

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/compose-spec/compose-go/v2/graph"
	"github.com/compose-spec/compose-go/v2/types"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
)

// Runner carries out a project's verbs through a kiln daemon.
type Runner struct {
	Kiln *client.Client
	// Out gets a line per step ("Container web-1  Started"), as docker
	// compose prints them; nil discards them.
	Out io.Writer
	// Timeout bounds each wait for a dependency's condition (healthy,
	// completed); 0 means 5 minutes.
	Timeout time.Duration
}

func (r *Runner) say(format string, a ...any) {
	if r.Out != nil {
		fmt.Fprintf(r.Out, format+"\n", a...)
	}
}

// VMs returns the project's VMs (its services' replicas made by compose),
// sorted by service and number.
func (r *Runner) VMs(ctx context.Context, project string, services ...string) ([]api.VM, error) {
	all, err := r.Kiln.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []api.VM
	for _, v := range all {
		if v.Config.Labels[LabelProject] != project {
			continue
		}
		if len(services) > 0 && !slices.Contains(services, v.Config.Labels[LabelService]) {
			continue
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		si, sj := out[i].Config.Labels[LabelService], out[j].Config.Labels[LabelService]
		if si != sj {
			return si < sj
		}
		ni, _ := strconv.Atoi(out[i].Config.Labels[LabelNumber])
		nj, _ := strconv.Atoi(out[j].Config.Labels[LabelNumber])
		return ni < nj
	})
	return out, nil
}

// Up makes what the project needs (networks, volumes) and its services'
// VMs, in dependency order, each started once the services it depends on
// meet their condition (started, healthy, completed successfully). A VM
// whose config is unchanged is kept (and started if stopped); a changed
// one is replaced; replicas beyond the count are removed. Services left
// empty means all.
func (r *Runner) Up(ctx context.Context, p *Project, services ...string) error {
	if len(services) > 0 {
		for _, s := range services {
			if _, err := p.GetService(s); err != nil {
				return errdefs.Invalid(fmt.Sprintf("no such service: %s (the project has %v)", s, p.ServiceNames()))
			}
		}
	}
	// Every VM's config first: a bad one fails the up before anything is
	// made.
	configs := map[string][]api.VMConfig{}
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		for n := 1; n <= Replicas(s); n++ {
			c, err := p.VMConfig(s, n)
			if err != nil {
				return err
			}
			configs[name] = append(configs[name], c)
		}
	}
	if err := r.ensureNetworks(ctx, p); err != nil {
		return err
	}
	if err := r.ensureVolumes(ctx, p); err != nil {
		return err
	}
	existing, err := r.VMs(ctx, p.Name)
	if err != nil {
		return err
	}
	byName := map[string]api.VM{}
	for _, v := range existing {
		byName[v.Name] = v
	}
	var mu sync.Mutex
	visit := func(ctx context.Context, name string, s types.ServiceConfig) error {
		if len(services) > 0 && !slices.Contains(services, name) && !r.isDependency(p, services, name) {
			return nil
		}
		if err := r.waitDependencies(ctx, p, s); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		return r.upService(ctx, p, s, configs[name], byName)
	}
	if err := graph.InDependencyOrder(ctx, p.Project, func(ctx context.Context, name string, s types.ServiceConfig) error {
		return visit(ctx, name, s)
	}); err != nil {
		return err
	}
	return nil
}

// isDependency tells whether service name is needed, directly or not, by
// one of services.
func (r *Runner) isDependency(p *Project, services []string, name string) bool {
	seen := map[string]bool{}
	var walk func(s string) bool
	walk = func(s string) bool {
		if seen[s] {
			return false
		}
		seen[s] = true
		for dep := range p.Services[s].DependsOn {
			if dep == name || walk(dep) {
				return true
			}
		}
		return false
	}
	for _, s := range services {
		if walk(s) {
			return true
		}
	}
	return false
}

func (r *Runner) upService(ctx context.Context, p *Project, s types.ServiceConfig, configs []api.VMConfig, byName map[string]api.VM) error {
	for _, c := range configs {
		v, ok := byName[c.Name]
		if ok && v.Config.Labels[LabelConfigHash] == c.Labels[LabelConfigHash] {
			if v.State.Running {
				r.say("Container %s  Running", c.Name)
				continue
			}
			if err := r.Kiln.Start(ctx, v.ID); err != nil {
				return fmt.Errorf("starting %s: %w", c.Name, err)
			}
			r.say("Container %s  Started", c.Name)
			continue
		}
		if ok {
			r.say("Container %s  Recreate", c.Name)
			if err := r.Kiln.Remove(ctx, v.ID, client.RemoveOptions{Force: true, Volumes: true}); err != nil {
				return fmt.Errorf("replacing %s: %w", c.Name, err)
			}
		}
		created, err := r.Kiln.Create(ctx, c)
		if err != nil {
			return fmt.Errorf("service %s: %w", s.Name, err)
		}
		r.say("Container %s  Created", c.Name)
		if err := r.Kiln.Start(ctx, created.ID); err != nil {
			return fmt.Errorf("starting %s: %w", c.Name, err)
		}
		r.say("Container %s  Started", c.Name)
	}
	// Replicas beyond the count.
	for name, v := range byName {
		if v.Config.Labels[LabelService] != s.Name {
			continue
		}
		n, _ := strconv.Atoi(v.Config.Labels[LabelNumber])
		if n > len(configs) {
			if err := r.Kiln.Remove(ctx, v.ID, client.RemoveOptions{Force: true, Volumes: true}); err != nil {
				return fmt.Errorf("removing %s: %w", name, err)
			}
			r.say("Container %s  Removed", name)
		}
	}
	return nil
}

// waitDependencies waits until each service s depends on meets its
// condition.
func (r *Runner) waitDependencies(ctx context.Context, p *Project, s types.ServiceConfig) error {
	timeout := r.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	deps := make([]string, 0, len(s.DependsOn))
	for d := range s.DependsOn {
		deps = append(deps, d)
	}
	sort.Strings(deps)
	for _, dep := range deps {
		cond := s.DependsOn[dep].Condition
		if cond == "" || cond == types.ServiceConditionStarted {
			continue
		}
		ds, ok := p.Services[dep]
		if !ok {
			continue // an optional dependency outside the active profiles
		}
		for n := 1; n <= Replicas(ds); n++ {
			name := VMName(p.Name, ds, n)
			if err := r.waitCondition(ctx, name, cond, timeout); err != nil {
				return fmt.Errorf("service %s depends on %s (%s): %w", s.Name, dep, cond, err)
			}
		}
	}
	return nil
}

// waitCondition polls a VM until it is healthy or has exited 0.
func (r *Runner) waitCondition(ctx context.Context, name, cond string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		v, err := r.Kiln.Inspect(ctx, name)
		if err != nil {
			return err
		}
		switch cond {
		case types.ServiceConditionHealthy:
			if v.Config.Healthcheck == nil && v.State.Health == nil {
				// No check of its own: an image's HEALTHCHECK shows up
				// once it runs; none at all cannot become healthy.
				if v.State.Running && !v.State.StartedAt.IsZero() && time.Since(v.State.StartedAt) > 2*time.Second {
					return fmt.Errorf("%s has no health check: it cannot become healthy", name)
				}
			}
			if v.State.Health != nil && v.State.Health.Status == api.HealthHealthy {
				r.say("Container %s  Healthy", name)
				return nil
			}
			if !v.State.Running && v.State.Status != "starting" && v.State.Status != "restarting" && v.State.Status != "created" {
				return fmt.Errorf("%s is %s (exit %d) before it became healthy", name, v.State.Status, v.State.ExitCode)
			}
		case types.ServiceConditionCompletedSuccessfully:
			if v.State.Status == "exited" && !v.State.FinishedAt.IsZero() {
				if v.State.ExitCode != 0 {
					return fmt.Errorf("%s exited %d", name, v.State.ExitCode)
				}
				r.say("Container %s  Exited", name)
				return nil
			}
		default:
			return errdefs.Invalid(fmt.Sprintf("depends_on condition %q: want service_started, service_healthy or service_completed_successfully", cond))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %s not met in %s", name, cond, timeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ensureNetworks makes the project's networks its services use that do
// not exist yet; external ones must exist.
func (r *Runner) ensureNetworks(ctx context.Context, p *Project) error {
	have, err := r.Kiln.Networks(ctx)
	if err != nil {
		return err
	}
	used := map[string]bool{}
	for _, s := range p.Services {
		if k, _ := serviceNetwork(s); k != "" {
			used[k] = true
		}
	}
	keys := make([]string, 0, len(used))
	for k := range used {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		name := p.NetworkName(key)
		if slices.ContainsFunc(have, func(n api.Network) bool { return n.Name == name }) {
			continue
		}
		nc := p.Networks[key]
		if nc.External {
			return fmt.Errorf("external network %s does not exist (kiln network create %s): %w", name, name, errdefs.ErrNotFound)
		}
		labels := map[string]string{LabelProject: p.Name, "com.docker.compose.network": key}
		for k, val := range nc.Labels {
			labels[k] = val
		}
		req := api.NetworkCreate{Name: name, Egress: !nc.Internal, Labels: labels}
		if len(nc.Ipam.Config) == 1 {
			req.Subnet, req.Gateway = nc.Ipam.Config[0].Subnet, nc.Ipam.Config[0].Gateway
		}
		if _, err := r.Kiln.CreateNetwork(ctx, req); err != nil {
			return fmt.Errorf("network %s: %w", key, err)
		}
		r.say("Network %s  Created", name)
	}
	return nil
}

// ensureVolumes makes the project's volumes that do not exist yet;
// external ones must exist.
func (r *Runner) ensureVolumes(ctx context.Context, p *Project) error {
	keys := make([]string, 0, len(p.Volumes))
	for k := range p.Volumes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		v := p.Volumes[key]
		name := p.VolumeName(key)
		if _, err := r.Kiln.InspectVolume(ctx, name); err == nil {
			continue
		} else if !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
		if v.External {
			return fmt.Errorf("external volume %s does not exist (kiln volume create %s): %w", name, name, errdefs.ErrNotFound)
		}
		size := 0
		if s, ok := v.DriverOpts["size"]; ok {
			n, err := options.ParseMemory(s)
			if err != nil {
				return errdefs.Invalid(fmt.Sprintf("volume %s: size %q: want a size like 1g", key, s))
			}
			size = n
		}
		labels := map[string]string{LabelProject: p.Name, "com.docker.compose.volume": key}
		for k, val := range v.Labels {
			labels[k] = val
		}
		if _, err := r.Kiln.CreateVolumeWith(ctx, api.VolumeCreateRequest{Name: name, SizeMiB: size, Labels: labels}); err != nil {
			return fmt.Errorf("volume %s: %w", key, err)
		}
		r.say("Volume %s  Created", name)
	}
	return nil
}

// Stop stops the project's VMs (of services, or all), dependents first.
func (r *Runner) Stop(ctx context.Context, p *Project, services ...string) error {
	return r.each(ctx, p, true, services, func(v api.VM) error {
		if !v.State.Running {
			return nil
		}
		if err := r.Kiln.Stop(ctx, v.ID, nil); err != nil {
			return err
		}
		r.say("Container %s  Stopped", v.Name)
		return nil
	})
}

// Start starts the project's stopped VMs, dependencies first.
func (r *Runner) Start(ctx context.Context, p *Project, services ...string) error {
	return r.each(ctx, p, false, services, func(v api.VM) error {
		if v.State.Running {
			return nil
		}
		if err := r.Kiln.Start(ctx, v.ID); err != nil {
			return err
		}
		r.say("Container %s  Started", v.Name)
		return nil
	})
}

// Restart restarts the project's VMs.
func (r *Runner) Restart(ctx context.Context, p *Project, services ...string) error {
	return r.each(ctx, p, false, services, func(v api.VM) error {
		if err := r.Kiln.Restart(ctx, v.ID, nil); err != nil {
			return err
		}
		r.say("Container %s  Restarted", v.Name)
		return nil
	})
}

// each calls fn on the project's VMs service by service, in dependency
// order (reverse: dependents first).
func (r *Runner) each(ctx context.Context, p *Project, reverse bool, services []string, fn func(api.VM) error) error {
	vms, err := r.VMs(ctx, p.Name, services...)
	if err != nil {
		return err
	}
	bySvc := map[string][]api.VM{}
	for _, v := range vms {
		s := v.Config.Labels[LabelService]
		bySvc[s] = append(bySvc[s], v)
	}
	var opts []func(*graph.Options)
	if reverse {
		opts = append(opts, graph.InReverseOrder)
	}
	var mu sync.Mutex
	return graph.InDependencyOrder(ctx, p.Project, func(ctx context.Context, name string, _ types.ServiceConfig) error {
		mu.Lock()
		defer mu.Unlock()
		for _, v := range bySvc[name] {
			if err := fn(v); err != nil {
				return fmt.Errorf("%s: %w", v.Name, err)
			}
		}
		return nil
	}, opts...)
}

// Down removes the project's VMs and the networks it made; with volumes,
// its volumes too (never external ones). What does not exist is skipped.
func (r *Runner) Down(ctx context.Context, p *Project, volumes bool) error {
	vms, err := r.VMs(ctx, p.Name)
	if err != nil {
		return err
	}
	if err := r.Stop(ctx, p); err != nil {
		return err
	}
	for _, v := range vms {
		if err := r.Kiln.Remove(ctx, v.ID, client.RemoveOptions{Force: true, Volumes: true}); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("removing %s: %w", v.Name, err)
		}
		r.say("Container %s  Removed", v.Name)
	}
	nets, err := r.Kiln.Networks(ctx)
	if err != nil {
		return err
	}
	for _, key := range p.NetworkNames() {
		if p.Networks[key].External {
			continue
		}
		name := p.NetworkName(key)
		if !slices.ContainsFunc(nets, func(n api.Network) bool { return n.Name == name }) {
			continue
		}
		if err := r.Kiln.RemoveNetwork(ctx, name); err != nil {
			return fmt.Errorf("network %s: %w", name, err)
		}
		r.say("Network %s  Removed", name)
	}
	if !volumes {
		return nil
	}
	for _, key := range p.VolumeNames() {
		if p.Volumes[key].External {
			continue
		}
		name := p.VolumeName(key)
		if err := r.Kiln.RemoveVolume(ctx, name); err != nil {
			if errors.Is(err, errdefs.ErrNotFound) {
				continue
			}
			return fmt.Errorf("volume %s: %w", name, err)
		}
		r.say("Volume %s  Removed", name)
	}
	return nil
}

package dockerapi

import (
	"fmt"
	"net/netip"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
	units "github.com/docker/go-units"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/options"
)

// The network modes docker names for a container on the default network;
// kiln's default network is its user-mode one.
func isDefaultNetwork(mode string) bool {
	return mode == "" || mode == "default" || mode == "bridge"
}

// toVMConfig maps a docker create request onto kiln's VM config. Fields
// that mean nothing for a VM and are harmless to drop come back as
// warnings; fields whose dropping would change what the program sees or
// may do are refused, naming the field.
func toVMConfig(name string, req container.CreateRequest) (api.VMConfig, []string, error) {
	var warn []string
	c := api.VMConfig{Name: name, Pull: "never"}
	cfg := req.Config
	if cfg == nil {
		return c, nil, refuse("the request has no container config")
	}
	hc := req.HostConfig
	if hc == nil {
		hc = &container.HostConfig{}
	}
	if cfg.Image == "" {
		return c, nil, refuse("no image given: Image is required")
	}
	c.Image = cfg.Image
	// The program's stdio: a VM's main program has neither a terminal
	// nor a stdin yet; exec has both.
	if cfg.Tty {
		return c, nil, refuse("Tty (docker run -t) is not supported for a VM's main program yet; run it without -t, and use docker exec -it for a terminal")
	}
	if cfg.OpenStdin || cfg.AttachStdin {
		return c, nil, refuse("OpenStdin (docker run -i) is not supported for a VM's main program yet; run it without -i, and use docker exec -i to feed a command")
	}
	c.Entrypoint = []string(cfg.Entrypoint)
	c.Cmd = []string(cfg.Cmd)
	c.Env = cfg.Env
	c.WorkingDir = cfg.WorkingDir
	c.User = cfg.User
	c.Labels = cfg.Labels
	if cfg.StopTimeout != nil {
		if *cfg.StopTimeout < 0 {
			return c, nil, refuse("invalid StopTimeout %d: want 0 or more seconds", *cfg.StopTimeout)
		}
		c.StopTimeout = *cfg.StopTimeout
	}
	if cfg.StopSignal != "" {
		warn = append(warn, fmt.Sprintf("StopSignal %s ignored: kiln stops a VM's program with its image's stop signal (default SIGTERM)", cfg.StopSignal))
	}
	if cfg.Hostname != "" {
		warn = append(warn, "Hostname ignored: a VM's hostname is its name")
	}
	if cfg.MacAddress != "" { //nolint:staticcheck // still sent by 1.41 clients
		return c, nil, refuse("MacAddress is not supported: kiln gives each VM its own")
	}
	if cfg.NetworkDisabled {
		c.Network = "none"
	}
	if h := cfg.Healthcheck; h != nil {
		c.Healthcheck = &api.HealthConfig{
			Test: h.Test, Interval: api.Duration(h.Interval), Timeout: api.Duration(h.Timeout),
			StartPeriod: api.Duration(h.StartPeriod), Retries: h.Retries,
		}
	}

	// What docker would not do in a VM, or would do differently.
	switch {
	case hc.Privileged:
		return c, nil, refuse("Privileged is refused: a VM's program is root in its own kernel already, and nothing of the host is given to it")
	case hc.PidMode.IsHost():
		return c, nil, refuse("PidMode host is refused: a VM has its own kernel and never sees the host's processes")
	case hc.IpcMode.IsHost():
		return c, nil, refuse("IpcMode host is refused: a VM never shares the host's IPC")
	case hc.UTSMode.IsHost():
		return c, nil, refuse("UTSMode host is refused: a VM has its own kernel and hostname")
	case hc.UsernsMode.IsHost():
		return c, nil, refuse("UsernsMode host is refused")
	case len(hc.Devices) > 0 || len(hc.DeviceRequests) > 0:
		return c, nil, refuse("Devices are refused: a VM is given no host device")
	case hc.ReadonlyRootfs:
		return c, nil, refuse("ReadonlyRootfs is not supported yet: a VM's root takes writes on its own disk")
	case len(hc.VolumesFrom) > 0:
		return c, nil, refuse("VolumesFrom is not supported: name the volumes with -v")
	case len(hc.Links) > 0:
		return c, nil, refuse("Links are not supported: put the VMs on one network")
	case hc.NetworkMode.IsContainer():
		return c, nil, refuse("NetworkMode %s is refused: a VM cannot share another's network stack", hc.NetworkMode)
	case hc.NetworkMode.IsHost():
		return c, nil, refuse("NetworkMode host is refused: a VM never shares the host's network stack; publish ports with -p")
	case len(hc.Tmpfs) > 0:
		return c, nil, refuse("Tmpfs mounts are not supported yet: use a volume")
	case hc.Runtime != "" && hc.Runtime != "kiln":
		return c, nil, refuse("Runtime %s is refused: every container here is a kiln VM", hc.Runtime)
	}
	for _, f := range []struct {
		set  bool
		name string
	}{
		{len(hc.CapAdd) > 0 || len(hc.CapDrop) > 0, "CapAdd/CapDrop (the program runs with its own kernel's capabilities)"},
		{len(hc.SecurityOpt) > 0, "SecurityOpt (the VM is the boundary)"},
		{len(hc.DNS) > 0 || len(hc.DNSSearch) > 0 || len(hc.DNSOptions) > 0, "Dns/DnsSearch/DnsOptions (the VM uses its network's resolver)"},
		{len(hc.Sysctls) > 0, "Sysctls (set them in the guest)"},
		{hc.ShmSize > 0, "ShmSize"},
		{hc.Init != nil && *hc.Init, "Init (kiln-init is always the VM's init)"},
		{hc.CPUShares > 0, "CpuShares"},
		{hc.PidsLimit != nil && *hc.PidsLimit > 0, "PidsLimit (the guest's own kernel counts its processes)"},
		{hc.OomScoreAdj != 0, "OomScoreAdj"},
		{hc.CgroupParent != "", "CgroupParent (kiln places each VM's cgroup)"},
		{len(hc.GroupAdd) > 0, "GroupAdd"},
	} {
		if f.set {
			warn = append(warn, f.name+" ignored")
		}
	}

	// Resources.
	if hc.Memory > 0 {
		c.MemoryMiB = int((hc.Memory + (1<<20 - 1)) >> 20)
	}
	cpus := 0.0
	switch {
	case hc.NanoCPUs > 0:
		cpus = float64(hc.NanoCPUs) / 1e9
	case hc.CPUQuota > 0:
		period := hc.CPUPeriod
		if period <= 0 {
			period = 100000
		}
		cpus = float64(hc.CPUQuota) / float64(period)
	}
	if cpus > 0 {
		n := int(cpus)
		if float64(n) < cpus {
			n++
			warn = append(warn, fmt.Sprintf("%g CPUs rounded up to %d: a VM has whole vCPUs", cpus, n))
		}
		c.CPUs = n
	}
	for _, u := range hc.Ulimits {
		if u.Soft < 0 || u.Hard < 0 {
			return c, nil, refuse("invalid ulimit %s: %d:%d (want limits of 0 or more)", u.Name, u.Soft, u.Hard)
		}
		c.Ulimits = append(c.Ulimits, api.Ulimit{Name: u.Name, Soft: uint64(u.Soft), Hard: uint64(u.Hard)})
	}
	// Restarts, removal, logs.
	if n := string(hc.RestartPolicy.Name); n != "" {
		spec := n
		if n == "on-failure" && hc.RestartPolicy.MaximumRetryCount > 0 {
			spec += ":" + strconv.Itoa(hc.RestartPolicy.MaximumRetryCount)
		}
		p, err := options.ParseRestartPolicy(spec)
		if err != nil {
			return c, nil, err
		}
		c.Restart = api.RestartPolicy(p)
	}
	c.AutoRemove = hc.AutoRemove
	if t := hc.LogConfig.Type; t != "" && t != "json-file" && t != "local" {
		return c, nil, refuse("log driver %s is not supported: kiln keeps each VM's output in rotated files (json-file's max-size and max-file options)", t)
	}
	var logOpts []string
	for k, v := range hc.LogConfig.Config {
		logOpts = append(logOpts, k+"="+v)
	}
	sort.Strings(logOpts)
	lc, err := options.ParseLogOpts(logOpts)
	if err != nil {
		return c, nil, err
	}
	c.Log = lc
	c.ExtraHosts = hc.ExtraHosts

	// Network.
	mode := string(hc.NetworkMode)
	switch {
	case c.Network == "none" || mode == "none":
		c.Network = "none"
	case isDefaultNetwork(mode):
	default:
		c.Network = mode
	}
	if nc := req.NetworkingConfig; nc != nil {
		for netName, ep := range nc.EndpointsConfig {
			if ep == nil {
				continue
			}
			if !isDefaultNetwork(netName) && netName != c.Network && !(c.Network == "" && isDefaultNetwork(mode)) {
				return c, nil, refuse("network %s: a VM is on one network, and NetworkMode names %s", netName, mode)
			}
			if !isDefaultNetwork(netName) {
				c.Network = netName
			}
			if ep.IPAMConfig != nil && ep.IPAMConfig.IPv4Address != "" {
				c.IP = ep.IPAMConfig.IPv4Address
			}
			for _, a := range ep.Aliases {
				if a != name && !slices.Contains(c.NetworkAliases, a) {
					c.NetworkAliases = append(c.NetworkAliases, a)
				}
			}
		}
	}
	// Ports: published ones, and with PublishAllPorts every exposed port on
	// an ephemeral one (the image's exposed ports are the daemon's to add).
	ports, err := toPorts(hc.PortBindings)
	if err != nil {
		return c, nil, err
	}
	if hc.PublishAllPorts {
		for p := range cfg.ExposedPorts {
			if _, ok := hc.PortBindings[p]; ok {
				continue
			}
			ports = append(ports, api.PortMapping{GuestPort: p.Int(), Protocol: p.Proto()})
		}
	}
	c.Ports = ports
	if c.Network == "none" && len(c.Ports) > 0 {
		return c, nil, refuse("cannot publish ports of a container on network none")
	}

	// Mounts: Binds as -v, Mounts as --mount, the image's volumes by
	// the daemon.
	for _, b := range hc.Binds {
		m, err := options.ParseVolumeFlag(b)
		if err != nil {
			return c, nil, err
		}
		c.Mounts = append(c.Mounts, m)
	}
	for _, m := range hc.Mounts {
		km, err := toMount(m)
		if err != nil {
			return c, nil, err
		}
		c.Mounts = append(c.Mounts, km)
	}
	for target := range cfg.Volumes {
		if !slices.ContainsFunc(c.Mounts, func(m api.Mount) bool { return path.Clean(m.Target) == path.Clean(target) }) {
			c.Mounts = append(c.Mounts, api.Mount{Type: "volume", Target: target, Anonymous: true})
		}
	}
	options.CleanMounts(c.Mounts)
	if err := options.ValidateMounts(c.Mounts); err != nil {
		return c, nil, err
	}
	return c, warn, nil
}

// toPorts maps docker's port bindings ("80/tcp" → host address and port).
func toPorts(pb nat.PortMap) ([]api.PortMapping, error) {
	var out []api.PortMapping
	keys := make([]string, 0, len(pb))
	for p := range pb {
		keys = append(keys, string(p))
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := nat.Port(k)
		proto, portStr := nat.SplitProtoPort(k)
		guest, err := strconv.Atoi(portStr)
		if err != nil || guest < 1 || guest > 65535 {
			return nil, refuse("invalid port %q in PortBindings: want PORT/tcp or PORT/udp with a port 1-65535", k)
		}
		if proto != "tcp" && proto != "udp" {
			return nil, refuse("invalid protocol %q of port %s: want tcp or udp", proto, k)
		}
		bindings := pb[p]
		if len(bindings) == 0 {
			bindings = []nat.PortBinding{{}}
		}
		for _, b := range bindings {
			m := api.PortMapping{GuestPort: guest, Protocol: proto}
			if b.HostIP != "" {
				a, err := netip.ParseAddr(b.HostIP)
				if err != nil {
					return nil, refuse("invalid HostIp %q of port %s: want an IP address", b.HostIP, k)
				}
				if !a.IsUnspecified() || a.Is6() {
					m.HostIP = b.HostIP
				}
			}
			if b.HostPort != "" {
				if strings.Contains(b.HostPort, "-") {
					return nil, refuse("host port range %s of port %s is not supported: give one port", b.HostPort, k)
				}
				hp, err := strconv.Atoi(b.HostPort)
				if err != nil || hp < 0 || hp > 65535 {
					return nil, refuse("invalid HostPort %q of port %s: want a port 0-65535", b.HostPort, k)
				}
				m.HostPort = hp
			}
			out = append(out, m)
		}
	}
	return out, nil
}

// toMount maps one of docker's Mounts entries.
func toMount(m mount.Mount) (api.Mount, error) {
	km := api.Mount{Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly}
	switch m.Type {
	case mount.TypeVolume:
		km.Type = "volume"
		km.Anonymous = m.Source == ""
	case mount.TypeBind:
		km.Type = "bind"
	default:
		return km, refuse("mount type %s (target %s) is not supported: want volume or bind", m.Type, m.Target)
	}
	return km, nil
}

// stateOf is docker's state word for a kiln VM's state.
func stateOf(s api.VMState) string {
	switch {
	case s.Paused:
		return "paused"
	case s.Status == "starting" || s.Status == "stopping" || s.Status == "running":
		return "running"
	case s.Status == "restarting", s.Status == "created", s.Status == "exited", s.Status == "dead":
		return s.Status
	}
	return "exited"
}

// statusLine is docker ps's STATUS: "Up 5 seconds (healthy)", "Exited (3)
// 2 minutes ago", "Created".
func statusLine(s api.VMState, now time.Time) string {
	switch stateOf(s) {
	case "running", "paused":
		line := "Up " + units.HumanDuration(now.Sub(s.StartedAt))
		if s.Paused {
			line += " (Paused)"
		} else if s.Health != nil {
			h := s.Health.Status
			if h == api.HealthStarting {
				h = "health: starting"
			}
			line += " (" + h + ")"
		}
		return line
	case "restarting":
		return fmt.Sprintf("Restarting (%d) %s ago", s.ExitCode, units.HumanDuration(now.Sub(s.FinishedAt)))
	case "created":
		return "Created"
	case "dead":
		return "Dead"
	}
	if s.FinishedAt.IsZero() {
		return fmt.Sprintf("Exited (%d)", s.ExitCode)
	}
	return fmt.Sprintf("Exited (%d) %s ago", s.ExitCode, units.HumanDuration(now.Sub(s.FinishedAt)))
}

// dockerTime is docker's spelling of a time in inspect: RFC 3339 with
// nanoseconds, and the zero time as docker writes it.
func dockerTime(t time.Time) string {
	if t.IsZero() {
		return "0001-01-01T00:00:00Z"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// command is the program and its arguments of a VM, as its config and
// image give them.
func command(v api.VM, img *api.Image) []string {
	ep, cmd := v.Config.Entrypoint, v.Config.Cmd
	if img != nil {
		if len(ep) == 0 {
			ep = img.Config.Entrypoint
			if len(cmd) == 0 {
				cmd = img.Config.Cmd
			}
		}
	}
	return append(slices.Clone(ep), cmd...)
}

// portMap is the ports of a VM in inspect's NetworkSettings.Ports shape:
// every exposed or published port, with its host bindings.
func portMap(v api.VM) nat.PortMap {
	pm := nat.PortMap{}
	for _, e := range v.ExposedPorts {
		pm[nat.Port(e)] = nil
	}
	published := v.Ports
	if len(published) == 0 {
		published = v.Config.Ports
	}
	for _, p := range published {
		k := nat.Port(fmt.Sprintf("%d/%s", p.GuestPort, protoOf(p)))
		if !v.State.Running {
			if _, ok := pm[k]; !ok {
				pm[k] = nil
			}
			continue
		}
		ip := p.HostIP
		if ip == "" {
			ip = "0.0.0.0"
		}
		pm[k] = append(pm[k], nat.PortBinding{HostIP: ip, HostPort: strconv.Itoa(p.HostPort)})
	}
	return pm
}

func protoOf(p api.PortMapping) string {
	if p.Protocol == "" {
		return "tcp"
	}
	return p.Protocol
}

// summaryPorts is the ports of a VM in docker ps's shape.
func summaryPorts(v api.VM) []container.Port {
	out := []container.Port{}
	pm := portMap(v)
	keys := make([]string, 0, len(pm))
	for k := range pm {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := nat.Port(k)
		bs := pm[p]
		if len(bs) == 0 {
			out = append(out, container.Port{PrivatePort: uint16(p.Int()), Type: p.Proto()})
			continue
		}
		for _, b := range bs {
			hp, _ := strconv.Atoi(b.HostPort)
			out = append(out, container.Port{IP: b.HostIP, PrivatePort: uint16(p.Int()), PublicPort: uint16(hp), Type: p.Proto()})
		}
	}
	return out
}

// mountPoints is a VM's mounts as docker shows them.
func mountPoints(v api.VM, volumes map[string]api.Volume) []container.MountPoint {
	out := []container.MountPoint{}
	for _, m := range v.Config.Mounts {
		mp := container.MountPoint{Destination: m.Target, RW: !m.ReadOnly, Mode: "", Propagation: ""}
		switch m.Type {
		case "volume":
			mp.Type = mount.TypeVolume
			mp.Name = m.Source
			mp.Driver = "local"
			if vol, ok := volumes[m.Source]; ok {
				mp.Source = vol.Path
			}
		default:
			mp.Type = mount.TypeBind
			mp.Source = m.Source
			mp.Propagation = mount.PropagationRPrivate
		}
		out = append(out, mp)
	}
	return out
}

// networkName is the docker network a VM is on.
func networkName(v api.VM) string {
	switch v.Config.Network {
	case "", "user":
		return "bridge"
	}
	return v.Config.Network
}

// endpoint is a VM's place on its network, as docker's inspect shows it.
func endpoint(v api.VM) *network.EndpointSettings {
	ep := &network.EndpointSettings{NetworkID: networkID(networkName(v))}
	if v.Config.Network != "" && v.Config.Network != "user" && v.Config.Network != "none" {
		// On a bridge network the VM is known by its name, its aliases
		// and, as docker lists them, its short ID.
		ep.Aliases = append(append([]string{v.Name}, v.Config.NetworkAliases...), v.ID[:12])
		ep.DNSNames = append([]string{v.Name}, v.Config.NetworkAliases...)
	}
	if ns := v.NetworkSettings; ns != nil {
		ep.IPAddress = ns.IPAddress
		ep.IPPrefixLen = ns.PrefixLen
		ep.Gateway = ns.Gateway
		ep.MacAddress = ns.MACAddress
		ep.EndpointID = v.ID
	}
	return ep
}

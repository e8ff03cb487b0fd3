package compose

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/options"
)

// Replicas is how many VMs a service runs: deploy.replicas, else scale,
// else 1.
func Replicas(s types.ServiceConfig) int {
	if s.Deploy != nil && s.Deploy.Replicas != nil {
		return *s.Deploy.Replicas
	}
	if s.Scale != nil {
		return *s.Scale
	}
	return 1
}

// VMName is the name of replica n (from 1) of a service: container_name
// for a service that sets it, else <project>-<service>-<n>.
func VMName(project string, s types.ServiceConfig, n int) string {
	if s.ContainerName != "" {
		return s.ContainerName
	}
	return fmt.Sprintf("%s-%s-%d", project, s.Name, n)
}

// NetworkName is the kiln network of a project's network key.
func (p *Project) NetworkName(key string) string {
	if n, ok := p.Networks[key]; ok && n.Name != "" {
		return n.Name
	}
	return p.Name + "_" + key
}

// VolumeName is the kiln volume of a project's volume key.
func (p *Project) VolumeName(key string) string {
	if v, ok := p.Volumes[key]; ok && v.Name != "" {
		return v.Name
	}
	return p.Name + "_" + key
}

// serviceNetwork is the network key a service is on ("" for none), and
// its settings there.
func serviceNetwork(s types.ServiceConfig) (string, *types.ServiceNetworkConfig) {
	if s.NetworkMode == "none" {
		return "", nil
	}
	for k, v := range s.Networks {
		return k, v
	}
	return "default", nil
}

// VMConfig is replica n of service s as kiln's create request, with
// compose's labels; its config-hash label covers everything else, so that
// up recreates exactly the VMs whose service changed.
func (p *Project) VMConfig(s types.ServiceConfig, n int) (api.VMConfig, error) {
	bad := func(key, format string, a ...any) error {
		return errdefs.Invalid(fmt.Sprintf("service %s: %s: %s", s.Name, key, fmt.Sprintf(format, a...)))
	}
	c := api.VMConfig{
		Name: VMName(p.Name, s, n), Image: s.Image, Cmd: []string(s.Command), WorkingDir: s.WorkingDir, User: s.User,
	}
	if s.Entrypoint != nil {
		c.Entrypoint = []string(s.Entrypoint)
	}
	switch s.PullPolicy {
	case "", types.PullPolicyMissing, types.PullPolicyIfNotPresent:
	case types.PullPolicyAlways, types.PullPolicyNever:
		c.Pull = s.PullPolicy
	default:
		return c, bad("pull_policy", "%s is not supported: want missing, always or never", s.PullPolicy)
	}
	// Environment: compose-go has folded env_file in; a variable without a
	// value and none in the environment is left out, as compose does.
	keys := make([]string, 0, len(s.Environment))
	for k := range s.Environment {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v := s.Environment[k]; v != nil {
			c.Env = append(c.Env, k+"="+*v)
		}
	}
	// Labels: the service's, then compose's.
	c.Labels = map[string]string{}
	for k, v := range s.Labels {
		c.Labels[k] = v
	}
	// Network.
	netKey, netCfg := serviceNetwork(s)
	if netKey == "" {
		c.Network = "none"
	} else {
		c.Network = p.NetworkName(netKey)
		c.NetworkAliases = []string{s.Name}
		if netCfg != nil {
			for _, a := range netCfg.Aliases {
				if a != s.Name {
					c.NetworkAliases = append(c.NetworkAliases, a)
				}
			}
			if netCfg.Ipv4Address != "" {
				if Replicas(s) > 1 {
					return c, bad("ipv4_address", "one address for %d replicas", Replicas(s))
				}
				c.IP = netCfg.Ipv4Address
			}
		}
	}
	// Ports, in -p's spelling, checked by the same parser.
	var specs []string
	for _, pc := range s.Ports {
		if pc.Mode == "ingress" && pc.Published == "" {
			pc.Mode = ""
		}
		spec := strconv.Itoa(int(pc.Target))
		if pc.Published != "" {
			spec = pc.Published + ":" + spec
			if pc.HostIP != "" {
				spec = pc.HostIP + ":" + spec
			}
		} else if pc.HostIP != "" {
			spec = pc.HostIP + "::" + spec
		}
		if pc.Protocol != "" && pc.Protocol != "tcp" {
			spec += "/" + pc.Protocol
		}
		if pc.Published != "" && Replicas(s) > 1 && !strings.Contains(pc.Published, "-") {
			return c, bad("ports", "host port %s for %d replicas: leave it out for ephemeral ones", pc.Published, Replicas(s))
		}
		specs = append(specs, spec)
	}
	ports, err := network.ParsePorts(specs)
	if err != nil {
		return c, fmt.Errorf("service %s: ports: %w", s.Name, err)
	}
	c.Ports = ports
	// Volumes.
	for _, v := range s.Volumes {
		m := api.Mount{Target: v.Target, ReadOnly: v.ReadOnly}
		switch v.Type {
		case types.VolumeTypeBind:
			m.Type, m.Source = "bind", v.Source
		case types.VolumeTypeVolume:
			m.Type = "volume"
			if v.Source == "" {
				m.Anonymous = true
			} else {
				m.Source = p.VolumeName(v.Source)
			}
		}
		c.Mounts = append(c.Mounts, m)
	}
	options.CleanMounts(c.Mounts)
	if err := options.ValidateMounts(c.Mounts); err != nil {
		return c, fmt.Errorf("service %s: volumes: %w", s.Name, err)
	}
	// Restarts: restart:, else deploy.restart_policy.
	restart := s.Restart
	if restart == "" && s.Deploy != nil && s.Deploy.RestartPolicy != nil {
		rp := s.Deploy.RestartPolicy
		switch rp.Condition {
		case "none":
			restart = "no"
		case "any", "":
			restart = "always"
		case "on-failure":
			restart = "on-failure"
			if rp.MaxAttempts != nil {
				restart += ":" + strconv.FormatUint(*rp.MaxAttempts, 10)
			}
		default:
			return c, bad("deploy.restart_policy.condition", "%q: want none, on-failure or any", rp.Condition)
		}
	}
	if restart != "" {
		rp, err := options.ParseRestartPolicy(restart)
		if err != nil {
			return c, fmt.Errorf("service %s: restart: %w", s.Name, err)
		}
		c.Restart = api.RestartPolicy(rp)
	}
	// Health.
	if h := s.HealthCheck; h != nil {
		hc := &api.HealthConfig{Test: []string(h.Test)}
		if h.Disable {
			hc.Test = []string{"NONE"}
		}
		if h.Interval != nil {
			hc.Interval = api.Duration(*h.Interval)
		}
		if h.Timeout != nil {
			hc.Timeout = api.Duration(*h.Timeout)
		}
		if h.StartPeriod != nil {
			hc.StartPeriod = api.Duration(*h.StartPeriod)
		}
		if h.Retries != nil {
			hc.Retries = int(*h.Retries)
		}
		c.Healthcheck = hc
	}
	if g := s.StopGracePeriod; g != nil {
		c.StopTimeout = int(math.Ceil(time.Duration(*g).Seconds()))
	}
	// Resources: mem_limit and cpus, else deploy.resources.limits.
	mem, cpus := int64(s.MemLimit), float64(s.CPUS)
	if s.Deploy != nil && s.Deploy.Resources.Limits != nil {
		l := s.Deploy.Resources.Limits
		if mem == 0 {
			mem = int64(l.MemoryBytes)
		}
		if cpus == 0 {
			cpus = float64(l.NanoCPUs)
		}
	}
	if mem > 0 {
		c.MemoryMiB = int((mem + (1<<20 - 1)) >> 20)
	}
	if cpus > 0 {
		c.CPUs = int(math.Ceil(cpus))
	}
	for name, u := range s.Ulimits {
		soft, hard := u.Soft, u.Hard
		if u.Single != 0 {
			soft, hard = u.Single, u.Single
		}
		if soft < 0 || hard < 0 {
			return c, bad("ulimits", "%s: want limits of 0 or more", name)
		}
		c.Ulimits = append(c.Ulimits, api.Ulimit{Name: name, Soft: uint64(soft), Hard: uint64(hard)})
	}
	sort.Slice(c.Ulimits, func(i, j int) bool { return c.Ulimits[i].Name < c.Ulimits[j].Name })
	for host, ips := range s.ExtraHosts {
		for _, ip := range ips {
			c.ExtraHosts = append(c.ExtraHosts, host+":"+ip)
		}
	}
	sort.Strings(c.ExtraHosts)
	if l := s.Logging; l != nil {
		if l.Driver != "" && l.Driver != "json-file" && l.Driver != "local" {
			return c, bad("logging.driver", "%s is not supported: kiln keeps each VM's output in rotated files (json-file's max-size and max-file)", l.Driver)
		}
		var opts []string
		for k, v := range l.Options {
			opts = append(opts, k+"="+v)
		}
		sort.Strings(opts)
		lc, err := options.ParseLogOpts(opts)
		if err != nil {
			return c, fmt.Errorf("service %s: logging: %w", s.Name, err)
		}
		c.Log = lc
	}
	if err := kilnExtension(s, &c); err != nil {
		return c, err
	}
	c.Labels[LabelConfigHash] = configHash(c)
	c.Labels[LabelProject] = p.Name
	c.Labels[LabelService] = s.Name
	c.Labels[LabelNumber] = strconv.Itoa(n)
	c.Labels[LabelOneOff] = "False"
	c.Labels[LabelWorkingDir] = p.WorkingDir
	c.Labels[LabelFiles] = strings.Join(p.ComposeFiles, ",")
	return c, nil
}

// kilnExtension reads a service's x-kiln: settings only a VM has.
//
//	x-kiln:
//	  kernel: NAME|PATH
//	  mode: full|binary
//	  disk_size: 2g
func kilnExtension(s types.ServiceConfig, c *api.VMConfig) error {
	raw, ok := s.Extensions["x-kiln"]
	if !ok {
		return nil
	}
	m, ok := raw.(map[string]any)
	if !ok {
		return errdefs.Invalid(fmt.Sprintf("service %s: x-kiln: want a mapping of kernel, mode, disk_size", s.Name))
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := fmt.Sprint(m[k])
		switch k {
		case "kernel":
			c.Kernel = v
		case "mode":
			if v != "full" && v != "binary" {
				return errdefs.Invalid(fmt.Sprintf("service %s: x-kiln.mode %q: want full or binary", s.Name, v))
			}
			c.Mode = v
		case "disk_size":
			n, err := options.ParseMemory(v)
			if err != nil {
				return errdefs.Invalid(fmt.Sprintf("service %s: x-kiln.disk_size %q: want a size like 2g", s.Name, v))
			}
			c.DiskMiB = n
		default:
			return errdefs.Invalid(fmt.Sprintf("service %s: x-kiln.%s is unknown: want kernel, mode or disk_size", s.Name, k))
		}
	}
	return nil
}

// configHash identifies a VM's config, its compose labels left out.
func configHash(c api.VMConfig) string {
	c.Name = ""
	b, _ := json.Marshal(c)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

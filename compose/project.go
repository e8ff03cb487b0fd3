// Package compose runs a compose file's services as kiln VMs. Files are
// read by the compose specification's own library (compose-go:
// interpolation, .env, profiles, extends, several files merged,
// validation); each service becomes VMs made through kiln's Go client, so
// a project works the same from `kiln compose` and from a Go program.
//
// A project's VMs are named <project>-<service>-<n> and carry docker
// compose's labels (com.docker.compose.project, .service,
// .container-number, .config-hash), so `kiln ps --filter
// label=com.docker.compose.project=P` finds them and `up` can tell what
// changed. Networks are kiln bridge networks named <project>_<network>,
// volumes kiln volumes named <project>_<volume>, as compose names them.
package compose

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"kiln.dev/kiln/internal/errdefs"
)

// The labels compose puts on what it makes, as docker compose spells them.
const (
	LabelProject    = "com.docker.compose.project"
	LabelService    = "com.docker.compose.service"
	LabelNumber     = "com.docker.compose.container-number"
	LabelConfigHash = "com.docker.compose.config-hash"
	LabelOneOff     = "com.docker.compose.oneoff"
	LabelWorkingDir = "com.docker.compose.project.working_dir"
	LabelFiles      = "com.docker.compose.project.config_files"
)

// LoadOptions say which files make a project and how.
type LoadOptions struct {
	// Files are the compose files (relative to the current directory),
	// merged in order; none means compose.yaml (or docker-compose.yml, …)
	// in WorkingDir.
	Files []string
	// Name is the project's name; "" takes COMPOSE_PROJECT_NAME, the
	// file's name: key, else the working directory's base name.
	Name string
	// WorkingDir is where relative paths start; "" is the current one.
	WorkingDir string
	// Profiles are the active profiles (besides COMPOSE_PROFILES).
	Profiles []string
	// EnvFiles replace the project directory's .env.
	EnvFiles []string
}

// Project is a loaded compose project and what kiln has to say about it.
type Project struct {
	*types.Project
	// Warnings name each key kiln does not honour, once.
	Warnings []string
}

// Load reads and checks a project: compose-go's own validation first,
// then kiln's, which refuses keys whose dropping would change what a
// service does (naming them) and warns once for each key it ignores.
func Load(ctx context.Context, o LoadOptions) (*Project, error) {
	var fns []cli.ProjectOptionsFn
	if o.WorkingDir != "" {
		fns = append(fns, cli.WithWorkingDirectory(o.WorkingDir))
	}
	fns = append(fns, cli.WithOsEnv, cli.WithConfigFileEnv, cli.WithDefaultConfigPath)
	if len(o.EnvFiles) > 0 {
		fns = append(fns, cli.WithEnvFiles(o.EnvFiles...))
	}
	fns = append(fns, cli.WithDotEnv, cli.WithDefaultProfiles(o.Profiles...))
	if o.Name != "" {
		fns = append(fns, cli.WithName(o.Name))
	}
	opts, err := cli.NewProjectOptions(o.Files, fns...)
	if err != nil {
		return nil, errdefs.Invalid(err.Error())
	}
	p, err := opts.LoadProject(ctx)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, errdefs.Mark(err, errdefs.ErrNotFound)
		}
		return nil, errdefs.Invalid(clarify(err.Error()))
	}
	// The raw model, for which keys the files use. (ProjectOptions'
	// LoadModel would interpolate without the environment.)
	details, err := opts.ReadConfigFiles(ctx, p.WorkingDir, opts)
	if err != nil {
		return nil, errdefs.Invalid(err.Error())
	}
	details.Environment = opts.Environment
	model, err := loader.LoadModelWithContext(ctx, *details, func(lo *loader.Options) {
		lo.SetProjectName(p.Name, true)
	})
	if err != nil {
		return nil, errdefs.Invalid(clarify(err.Error()))
	}
	out := &Project{Project: p}
	if err := out.check(model); err != nil {
		return nil, err
	}
	return out, nil
}

// falseSchema is how compose-go's schema check names a key the
// specification does not have.
var falseSchema = regexp.MustCompile(`(services\.[^ ]+|[a-z_]+\.[^ ]+) false schema`)

// clarify says "unknown key" where compose-go's schema check says "false
// schema".
func clarify(msg string) string {
	return falseSchema.ReplaceAllString(msg, "$1: unknown key (the compose specification has no such key)")
}

// Key policies: what kiln does with a compose key.
const (
	keyUsed = iota
	keyIgnored
	keyRefused
)

type keyPolicy struct {
	how int
	why string
}

// serviceKeys are the service keys kiln looks at: used, ignored with a
// warning, or refused. A key not listed is ignored with a warning.
var serviceKeys = map[string]keyPolicy{
	"image": {keyUsed, ""}, "command": {keyUsed, ""}, "entrypoint": {keyUsed, ""},
	"environment": {keyUsed, ""}, "env_file": {keyUsed, ""}, "working_dir": {keyUsed, ""},
	"user": {keyUsed, ""}, "ports": {keyUsed, ""}, "volumes": {keyUsed, ""}, "networks": {keyUsed, ""},
	"restart": {keyUsed, ""}, "healthcheck": {keyUsed, ""}, "depends_on": {keyUsed, ""},
	"stop_grace_period": {keyUsed, ""}, "mem_limit": {keyUsed, ""}, "cpus": {keyUsed, ""},
	"labels": {keyUsed, ""}, "deploy": {keyUsed, ""}, "scale": {keyUsed, ""}, "extra_hosts": {keyUsed, ""},
	"ulimits": {keyUsed, ""}, "logging": {keyUsed, ""}, "expose": {keyUsed, ""}, "profiles": {keyUsed, ""},
	"extends": {keyUsed, ""}, "x-kiln": {keyUsed, ""}, "container_name": {keyUsed, ""},
	"pull_policy": {keyUsed, ""}, "network_mode": {keyUsed, ""}, "mac_address": {keyRefused, "kiln gives each VM its own MAC"},
	"privileged":     {keyRefused, "a VM's program is root in its own kernel already, and nothing of the host is given to it"},
	"pid":            {keyRefused, "a VM has its own kernel and never sees the host's processes"},
	"ipc":            {keyRefused, "a VM never shares the host's or another's IPC"},
	"uts":            {keyRefused, "a VM has its own kernel and hostname"},
	"userns_mode":    {keyRefused, "a VM has its own kernel"},
	"cgroup":         {keyRefused, "a VM has its own kernel"},
	"devices":        {keyRefused, "a VM is given no host device"},
	"gpus":           {keyRefused, "a VM is given no host device"},
	"read_only":      {keyRefused, "a VM's root takes writes on its own disk (not supported yet)"},
	"tmpfs":          {keyRefused, "not supported yet: use a volume"},
	"volumes_from":   {keyRefused, "name the volumes instead"},
	"links":          {keyRefused, "put the services on one network: they find each other by service name"},
	"external_links": {keyRefused, "put the services on one network"},
	"tty":            {keyRefused, "a VM's main program has no terminal yet (kiln compose exec has one)"},
	"stdin_open":     {keyRefused, "a VM's main program has no stdin yet (kiln compose exec has one)"},
	"runtime":        {keyRefused, "every service here is a kiln VM"},
	"build":          {keyRefused, "kiln does not build images: build with any OCI builder, kiln load it, and name it with image:"},
	"cap_add":        {keyIgnored, "the program has its own kernel's capabilities"},
	"cap_drop":       {keyIgnored, "the program has its own kernel's capabilities"},
	"security_opt":   {keyIgnored, "the VM is the boundary"},
	"dns":            {keyIgnored, "the VM uses its network's resolver"},
	"dns_search":     {keyIgnored, "the VM uses its network's resolver"},
	"dns_opt":        {keyIgnored, "the VM uses its network's resolver"},
	"sysctls":        {keyIgnored, "set them in the guest"},
	"shm_size":       {keyIgnored, ""},
	"init":           {keyIgnored, "kiln-init is always the VM's init"},
	"hostname":       {keyIgnored, "a VM's hostname is its name"},
	"domainname":     {keyIgnored, ""},
	"stop_signal":    {keyIgnored, "kiln stops a program with its image's stop signal"},
	"pids_limit":     {keyIgnored, "the guest's own kernel counts its processes"},
	"oom_score_adj":  {keyIgnored, ""},
	"cgroup_parent":  {keyIgnored, "kiln places each VM's cgroup"},
	"group_add":      {keyIgnored, ""},
	"platform":       {keyIgnored, "kiln runs linux/amd64"},
}

// deployKeys are the deploy: keys kiln uses; others are ignored with a
// warning.
var deployKeys = map[string]bool{"replicas": true, "resources": true, "restart_policy": true, "mode": true}

// check applies kiln's key policy to the merged, interpolated model.
func (p *Project) check(model map[string]any) error {
	warned := map[string]bool{}
	warn := func(key, why string) {
		if warned[key] {
			return
		}
		warned[key] = true
		msg := "key " + key + " is not supported by kiln and is ignored"
		if why != "" {
			msg += ": " + why
		}
		p.Warnings = append(p.Warnings, msg)
	}
	services, _ := model["services"].(map[string]any)
	names := make([]string, 0, len(services))
	for n := range services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		svc, _ := services[name].(map[string]any)
		keys := make([]string, 0, len(svc))
		for k := range svc {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			pol, known := serviceKeys[k]
			switch {
			case strings.HasPrefix(k, "x-") && k != "x-kiln":
			case !known:
				warn(k, "")
			case pol.how == keyIgnored:
				warn(k, pol.why)
			case pol.how == keyRefused:
				if k == "build" && svc["image"] != nil {
					warn(k, "the service's image: is run as it is")
					continue
				}
				return errdefs.Invalid(fmt.Sprintf("service %s: key %s is refused: %s", name, k, pol.why))
			}
		}
		if d, ok := svc["deploy"].(map[string]any); ok {
			for k := range d {
				if !deployKeys[k] {
					warn("deploy."+k, "")
				}
			}
		}
	}
	for _, k := range []string{"secrets", "configs", "models"} {
		if _, ok := model[k]; ok {
			warn(k, "")
		}
	}
	return p.checkServices()
}

// checkServices refuses service settings whose values kiln cannot honour.
func (p *Project) checkServices() error {
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		if s.Image == "" {
			return errdefs.Invalid(fmt.Sprintf("service %s: no image: kiln runs images (build one with any OCI builder and kiln load it)", name))
		}
		switch m := s.NetworkMode; {
		case m == "" || m == "none" || m == "bridge" || m == "default":
		case m == "host":
			return errdefs.Invalid(fmt.Sprintf("service %s: network_mode host is refused: a VM never shares the host's network stack; publish ports instead", name))
		default:
			return errdefs.Invalid(fmt.Sprintf("service %s: network_mode %s is refused: a VM cannot share another's network stack", name, m))
		}
		if len(s.Networks) > 1 {
			return errdefs.Invalid(fmt.Sprintf("service %s: %d networks: a kiln VM is on one network", name, len(s.Networks)))
		}
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeVolume && v.Type != types.VolumeTypeBind {
				return errdefs.Invalid(fmt.Sprintf("service %s: volume %s of type %s is not supported: want a named volume or a host directory", name, v.Target, v.Type))
			}
		}
	}
	for key, n := range p.Networks {
		if n.External {
			continue
		}
		if n.Driver != "" && n.Driver != "bridge" {
			return errdefs.Invalid(fmt.Sprintf("network %s: driver %s is not supported: kiln makes bridge networks", key, n.Driver))
		}
		if len(n.Ipam.Config) > 1 {
			return errdefs.Invalid(fmt.Sprintf("network %s: a network takes one subnet; %d given", key, len(n.Ipam.Config)))
		}
	}
	for key, v := range p.Volumes {
		if v.External {
			continue
		}
		if v.Driver != "" && v.Driver != "local" {
			return errdefs.Invalid(fmt.Sprintf("volume %s: driver %s is not supported: kiln's volumes are local disk images", key, v.Driver))
		}
		for k := range v.DriverOpts {
			if k != "size" {
				return errdefs.Invalid(fmt.Sprintf("volume %s: driver_opts %s is not supported: kiln's volumes take size only", key, k))
			}
		}
	}
	return nil
}

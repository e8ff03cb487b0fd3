package compose

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

// load writes files into a new directory and loads the project there.
func load(t *testing.T, files map[string]string, o LoadOptions) (*Project, error) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o.WorkingDir = dir
	if o.Name == "" {
		o.Name = "proj"
	}
	return Load(context.Background(), o)
}

func TestVMConfigOfAService(t *testing.T) {
	t.Setenv("TAG", "7")
	p, err := load(t, map[string]string{
		"compose.yaml": `
x-vm: &vm
  kernel: /k/vmlinux
  disk_size: 2g
services:
  web:
    image: app:${TAG}
    command: ["serve", "--port", "80"]
    environment: [A=1, B]
    env_file: [web.env]
    ports: ["127.0.0.1:8080:80", "53/udp"]
    volumes: ["data:/var/lib/app", "/srv/static:/static:ro", "/cache"]
    networks:
      back:
        aliases: [api]
    restart: on-failure:3
    healthcheck: {test: ["CMD", "true"], interval: 2s, retries: 4}
    stop_grace_period: 1500ms
    mem_limit: 300m
    cpus: 1.5
    labels: {tier: front}
    ulimits: {nofile: {soft: 1024, hard: 2048}}
    extra_hosts: ["db.example:10.1.2.3"]
    logging: {driver: json-file, options: {max-size: 1m, max-file: "2"}}
    x-kiln: *vm
  job:
    image: job:1
    network_mode: none
    deploy:
      replicas: 2
      resources: {limits: {memory: 64m, cpus: "0.5"}}
      restart_policy: {condition: none}
networks:
  back: {}
volumes:
  data: {}
`,
		"web.env": "C=from-file\n",
	}, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Warnings) != 0 {
		t.Errorf("warnings for supported keys: %q", p.Warnings)
	}
	web, err := p.VMConfig(p.Services["web"], 1)
	if err != nil {
		t.Fatal(err)
	}
	want := api.VMConfig{
		Name: "proj-web-1", Image: "app:7", Cmd: []string{"serve", "--port", "80"},
		Env:            []string{"A=1", "C=from-file"},
		Network:        "proj_back",
		NetworkAliases: []string{"web", "api"},
		Ports: []api.PortMapping{
			{HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80, Protocol: "tcp"},
			{GuestPort: 53, Protocol: "udp"},
		},
		Mounts: []api.Mount{
			{Type: "volume", Source: "proj_data", Target: "/var/lib/app"},
			{Type: "bind", Source: "/srv/static", Target: "/static", ReadOnly: true},
			{Type: "volume", Target: "/cache", Anonymous: true},
		},
		Restart:     api.RestartPolicy{Name: "on-failure", MaxRetries: 3},
		Healthcheck: &api.HealthConfig{Test: []string{"CMD", "true"}, Interval: api.Duration(2e9), Retries: 4},
		StopTimeout: 2, MemoryMiB: 300, CPUs: 2,
		Ulimits:    []api.Ulimit{{Name: "nofile", Soft: 1024, Hard: 2048}},
		ExtraHosts: []string{"db.example:10.1.2.3"},
		Log:        api.LogConfig{MaxSize: 1 << 20, MaxFiles: 2},
		Kernel:     "/k/vmlinux", DiskMiB: 2048,
	}
	labels := web.Labels
	web.Labels = nil
	if !reflect.DeepEqual(web, want) {
		t.Errorf("web's VM config:\n got %+v\nwant %+v", web, want)
	}
	for k, v := range map[string]string{"tier": "front", LabelProject: "proj", LabelService: "web", LabelNumber: "1", LabelOneOff: "False"} {
		if labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, labels[k], v)
		}
	}
	if len(labels[LabelConfigHash]) != 64 {
		t.Errorf("config hash %q", labels[LabelConfigHash])
	}
	if Replicas(p.Services["job"]) != 2 {
		t.Errorf("job replicas %d, want 2", Replicas(p.Services["job"]))
	}
	j1, err := p.VMConfig(p.Services["job"], 1)
	if err != nil {
		t.Fatal(err)
	}
	j2, _ := p.VMConfig(p.Services["job"], 2)
	if j1.Name != "proj-job-1" || j2.Name != "proj-job-2" || j1.Network != "none" || j1.MemoryMiB != 64 || j1.CPUs != 1 || j1.Restart.Name != "no" {
		t.Errorf("job: %+v", j1)
	}
	if j1.Labels[LabelConfigHash] != j2.Labels[LabelConfigHash] {
		t.Error("two replicas of one service have different config hashes")
	}
	// A change of the service changes its hash; the other service's stays.
	t.Setenv("TAG", "8")
	p2, err := load(t, map[string]string{"compose.yaml": "services:\n  web:\n    image: app:${TAG}\n"}, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w2, _ := p2.VMConfig(p2.Services["web"], 1)
	if w2.Labels[LabelConfigHash] == labels[LabelConfigHash] {
		t.Error("a changed service kept its config hash")
	}
}

func TestLoadWarnsOnceForIgnoredKeys(t *testing.T) {
	p, err := load(t, map[string]string{"compose.yaml": `
services:
  a: {image: x, cap_add: [NET_ADMIN], dns: [1.1.1.1], stop_signal: SIGINT}
  b: {image: x, cap_add: [SYS_TIME], deploy: {placement: {constraints: ["node.role==manager"]}}}
`}, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(p.Warnings, "\n")
	for _, key := range []string{"cap_add", "dns", "stop_signal", "deploy.placement"} {
		if n := strings.Count(joined, "key "+key+" "); n != 1 {
			t.Errorf("key %s warned %d times, want once:\n%s", key, n, joined)
		}
	}
}

func TestLoadRefusesBadFiles(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"unknown key", map[string]string{"compose.yaml": "services:\n  a:\n    image: x\n    colour: red\n"}, "services.a.colour: unknown key"},
		{"bad port", map[string]string{"compose.yaml": "services:\n  a:\n    image: x\n    ports: [\"99999:80\"]\n"}, "99999"},
		{"cycle", map[string]string{"compose.yaml": "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n"}, "dependency cycle detected"},
		{"missing env_file", map[string]string{"compose.yaml": "services:\n  a: {image: x, env_file: [nope.env]}\n"}, "nope.env"},
		{"privileged", map[string]string{"compose.yaml": "services:\n  a: {image: x, privileged: true}\n"}, "service a: key privileged is refused"},
		{"host network", map[string]string{"compose.yaml": "services:\n  a: {image: x, network_mode: host}\n"}, "network_mode host is refused"},
		{"devices", map[string]string{"compose.yaml": "services:\n  a: {image: x, devices: [\"/dev/kvm:/dev/kvm\"]}\n"}, "key devices is refused"},
		{"build only", map[string]string{"compose.yaml": "services:\n  a: {build: .}\n"}, "key build is refused"},
		{"two networks", map[string]string{"compose.yaml": "services:\n  a: {image: x, networks: [n1, n2]}\nnetworks: {n1: {}, n2: {}}\n"}, "a kiln VM is on one network"},
		{"volume driver", map[string]string{"compose.yaml": "services:\n  a: {image: x}\nvolumes: {v: {driver: nfs}}\n"}, "driver nfs is not supported"},
		{"no file", map[string]string{}, "no configuration file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := load(t, tt.files, LoadOptions{})
			if err == nil && p != nil {
				// Some values are only checked when a VM's config is made,
				// which up does for every VM before it makes anything.
				for _, name := range p.ServiceNames() {
					if _, err = p.VMConfig(p.Services[name], 1); err != nil {
						break
					}
				}
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) && !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("%v: want an invalid-argument or not-found error (kiln's exit 125)", err)
			}
		})
	}
}

func TestProjectName(t *testing.T) {
	p, err := load(t, map[string]string{"compose.yaml": "name: named\nservices:\n  a: {image: x}\n"}, LoadOptions{Name: "given"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "given" || p.NetworkName("default") != "given_default" {
		t.Errorf("name %q, network %q", p.Name, p.NetworkName("default"))
	}
	c, _ := p.VMConfig(p.Services["a"], 1)
	if c.Name != "given-a-1" {
		t.Errorf("VM name %q, want given-a-1", c.Name)
	}
}

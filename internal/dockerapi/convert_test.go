package dockerapi

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

// createReq is a docker create request for image alpine, changed by fn.
func createReq(fn func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig)) container.CreateRequest {
	req := container.CreateRequest{
		Config:           &container.Config{Image: "alpine"},
		HostConfig:       &container.HostConfig{},
		NetworkingConfig: &network.NetworkingConfig{},
	}
	if fn != nil {
		fn(req.Config, req.HostConfig, req.NetworkingConfig)
	}
	return req
}

func TestToVMConfig(t *testing.T) {
	int64p := func(n int64) *int64 { return &n }
	intp := func(n int) *int { return &n }
	tests := []struct {
		name string
		req  func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig)
		// want changes the config of a bare request (Name web, Image
		// alpine, Pull never) into the one expected.
		want func(c *api.VMConfig)
		// warn are substrings of the warnings expected, one each, in order.
		warn []string
	}{
		{name: "bare", want: func(c *api.VMConfig) {}},
		{
			name: "program",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				c.Cmd = []string{"echo", "hi"}
				c.Entrypoint = []string{"/bin/sh", "-c"}
				c.Env = []string{"A=1", "B=two words"}
				c.WorkingDir = "/srv"
				c.User = "1000:1000"
				c.Labels = map[string]string{"tier": "front"}
			},
			want: func(c *api.VMConfig) {
				c.Cmd = []string{"echo", "hi"}
				c.Entrypoint = []string{"/bin/sh", "-c"}
				c.Env = []string{"A=1", "B=two words"}
				c.WorkingDir = "/srv"
				c.User = "1000:1000"
				c.Labels = map[string]string{"tier": "front"}
			},
		},
		{
			name: "port bindings",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.PortBindings = nat.PortMap{
					"80/tcp":   {{HostIP: "127.0.0.1", HostPort: "8080"}},
					"53/udp":   {{HostPort: ""}},
					"443/tcp":  {{HostIP: "0.0.0.0", HostPort: "8443"}},
					"8080/tcp": {{HostIP: "::", HostPort: "0"}},
					"9000/tcp": nil,
				}
			},
			// Sorted by key; 0.0.0.0 is kiln's default address and goes,
			// :: does not (it binds IPv6); no HostPort is an ephemeral port.
			want: func(c *api.VMConfig) {
				c.Ports = []api.PortMapping{
					{GuestPort: 443, Protocol: "tcp", HostPort: 8443},
					{GuestPort: 53, Protocol: "udp"},
					{GuestPort: 80, Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 8080},
					{GuestPort: 8080, Protocol: "tcp", HostIP: "::"},
					{GuestPort: 9000, Protocol: "tcp"},
				}
			},
		},
		{
			name: "publish all exposed ports",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				c.ExposedPorts = nat.PortSet{"80/tcp": {}, "9000/udp": {}}
				hc.PortBindings = nat.PortMap{"80/tcp": {{HostPort: "8080"}}}
				hc.PublishAllPorts = true
			},
			// A port bound by PortBindings keeps its binding and is not
			// published twice.
			want: func(c *api.VMConfig) {
				c.Ports = []api.PortMapping{{GuestPort: 80, Protocol: "tcp", HostPort: 8080}, {GuestPort: 9000, Protocol: "udp"}}
			},
		},
		{
			name: "exposed ports without PublishAllPorts are not published",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				c.ExposedPorts = nat.PortSet{"80/tcp": {}}
			},
			want: func(c *api.VMConfig) {},
		},
		{
			name: "binds",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.Binds = []string{"vol:/x", "/host:/y:ro"}
			},
			want: func(c *api.VMConfig) {
				c.Mounts = []api.Mount{
					{Type: "volume", Source: "vol", Target: "/x"},
					{Type: "bind", Source: "/host", Target: "/y", ReadOnly: true},
				}
			},
		},
		{
			name: "mounts",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.Mounts = []mount.Mount{
					{Type: mount.TypeVolume, Source: "data", Target: "/data"},
					{Type: mount.TypeBind, Source: "/srv/", Target: "/srv/", ReadOnly: true},
					{Type: mount.TypeVolume, Target: "/scratch"},
				}
			},
			want: func(c *api.VMConfig) {
				c.Mounts = []api.Mount{
					{Type: "volume", Source: "data", Target: "/data"},
					{Type: "bind", Source: "/srv", Target: "/srv", ReadOnly: true},
					{Type: "volume", Target: "/scratch", Anonymous: true},
				}
			},
		},
		{
			name: "config volumes become anonymous volumes unless mounted",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.Binds = []string{"vol:/x"}
				c.Volumes = map[string]struct{}{"/x/": {}, "/cache": {}}
			},
			want: func(c *api.VMConfig) {
				c.Mounts = []api.Mount{
					{Type: "volume", Source: "vol", Target: "/x"},
					{Type: "volume", Target: "/cache", Anonymous: true},
				}
			},
		},
		{
			name: "restart on-failure with retries",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyOnFailure, MaximumRetryCount: 5}
			},
			want: func(c *api.VMConfig) { c.Restart = api.RestartPolicy{Name: "on-failure", MaxRetries: 5} },
		},
		{
			name: "restart always",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyAlways}
			},
			want: func(c *api.VMConfig) { c.Restart = api.RestartPolicy{Name: "always"} },
		},
		{
			name: "memory rounds up to MiB",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.Memory = 100<<20 + 1
			},
			want: func(c *api.VMConfig) { c.MemoryMiB = 101 },
		},
		{
			name: "memory of whole MiB",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.Memory = 64 << 20
			},
			want: func(c *api.VMConfig) { c.MemoryMiB = 64 },
		},
		{
			name: "fractional NanoCPUs round up with a warning",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.NanoCPUs = 1.5e9
			},
			want: func(c *api.VMConfig) { c.CPUs = 2 },
			warn: []string{"1.5 CPUs rounded up to 2"},
		},
		{
			name: "whole NanoCPUs",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.NanoCPUs = 3e9
			},
			want: func(c *api.VMConfig) { c.CPUs = 3 },
		},
		{
			name: "CpuQuota over CpuPeriod",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.CPUQuota = 150000
				hc.CPUPeriod = 50000
			},
			want: func(c *api.VMConfig) { c.CPUs = 3 },
		},
		{
			name: "CpuQuota with the default period",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.CPUQuota = 50000
			},
			want: func(c *api.VMConfig) { c.CPUs = 1 },
			warn: []string{"0.5 CPUs rounded up to 1"},
		},
		{
			name: "json-file log options",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.LogConfig = container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "10m", "max-file": "3"}}
			},
			want: func(c *api.VMConfig) { c.Log = api.LogConfig{MaxSize: 10 << 20, MaxFiles: 3} },
		},
		{
			name: "local log driver",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.LogConfig = container.LogConfig{Type: "local"}
			},
			want: func(c *api.VMConfig) {},
		},
		{
			name: "network mode default",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.NetworkMode = "default"
			},
			want: func(c *api.VMConfig) {},
		},
		{
			name: "network mode bridge",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.NetworkMode = "bridge"
				nc.EndpointsConfig = map[string]*network.EndpointSettings{"bridge": {}}
			},
			want: func(c *api.VMConfig) {},
		},
		{
			name: "network mode none",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.NetworkMode = "none"
			},
			want: func(c *api.VMConfig) { c.Network = "none" },
		},
		{
			name: "network disabled",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				c.NetworkDisabled = true
				hc.NetworkMode = "backend"
			},
			want: func(c *api.VMConfig) { c.Network = "none" },
		},
		{
			name: "custom network",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.NetworkMode = "backend"
			},
			want: func(c *api.VMConfig) { c.Network = "backend" },
		},
		{
			name: "custom network with an address",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.NetworkMode = "backend"
				nc.EndpointsConfig = map[string]*network.EndpointSettings{
					"backend": {IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: "10.99.0.10"}},
				}
			},
			want: func(c *api.VMConfig) { c.Network, c.IP = "backend", "10.99.0.10" },
		},
		{
			name: "network named by its endpoint only",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				nc.EndpointsConfig = map[string]*network.EndpointSettings{"backend": {}}
			},
			want: func(c *api.VMConfig) { c.Network = "backend" },
		},
		{
			name: "auto remove and stop timeout",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.AutoRemove = true
				c.StopTimeout = intp(25)
			},
			want: func(c *api.VMConfig) { c.AutoRemove, c.StopTimeout = true, 25 },
		},
		{
			name: "ulimits, extra hosts, health check",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.Ulimits = []*container.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}}
				hc.ExtraHosts = []string{"db:10.0.0.5"}
				c.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "true"}, Interval: time.Second, Retries: 3}
			},
			want: func(c *api.VMConfig) {
				c.Ulimits = []api.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}}
				c.ExtraHosts = []string{"db:10.0.0.5"}
				c.Healthcheck = &api.HealthConfig{Test: []string{"CMD", "true"}, Interval: api.Duration(time.Second), Retries: 3}
			},
		},
		{
			name: "runtime kiln",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.Runtime = "kiln"
			},
			want: func(c *api.VMConfig) {},
		},
		// Harmless to drop: a warning naming the field, no error.
		{
			name: "CapAdd warns",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.CapAdd = []string{"NET_ADMIN"}
			},
			want: func(c *api.VMConfig) {},
			warn: []string{"CapAdd"},
		},
		{
			name: "Dns warns",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				hc.DNS = []string{"1.1.1.1"}
			},
			want: func(c *api.VMConfig) {},
			warn: []string{"Dns"},
		},
		{
			name: "StopSignal warns",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				c.StopSignal = "SIGINT"
			},
			want: func(c *api.VMConfig) {},
			warn: []string{"StopSignal SIGINT"},
		},
		{
			name: "several warnings",
			req: func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
				c.Hostname = "box"
				hc.SecurityOpt = []string{"no-new-privileges"}
				hc.PidsLimit = int64p(100)
				hc.ShmSize = 64 << 20
			},
			want: func(c *api.VMConfig) {},
			warn: []string{"Hostname", "SecurityOpt", "ShmSize", "PidsLimit"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, warn, err := toVMConfig("web", createReq(tt.req))
			if err != nil {
				t.Fatalf("toVMConfig: %v", err)
			}
			want := api.VMConfig{Name: "web", Image: "alpine", Pull: "never"}
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("config\n got %+v\nwant %+v", got, want)
			}
			if len(warn) != len(tt.warn) {
				t.Fatalf("warnings %q, want %d naming %q", warn, len(tt.warn), tt.warn)
			}
			for i, w := range tt.warn {
				if !strings.Contains(warn[i], w) {
					t.Errorf("warning %d %q does not name %q", i, warn[i], w)
				}
			}
		})
	}
}

// A request with no HostConfig at all (docker's API allows it) is the
// bare config.
func TestToVMConfigNoHostConfig(t *testing.T) {
	got, warn, err := toVMConfig("", container.CreateRequest{Config: &container.Config{Image: "alpine", Cmd: []string{"true"}}})
	if err != nil || len(warn) != 0 {
		t.Fatalf("toVMConfig: %v, warnings %q", err, warn)
	}
	want := api.VMConfig{Image: "alpine", Pull: "never", Cmd: []string{"true"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config %+v, want %+v", got, want)
	}
}

func TestToVMConfigRefuses(t *testing.T) {
	tests := []struct {
		name string
		req  func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig)
		// msg is what the message must name.
		msg string
	}{
		{"Privileged", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.Privileged = true
		}, "Privileged"},
		{"PidMode host", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) { hc.PidMode = "host" }, "PidMode host"},
		{"IpcMode host", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) { hc.IpcMode = "host" }, "IpcMode host"},
		{"UTSMode host", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) { hc.UTSMode = "host" }, "UTSMode host"},
		{"UsernsMode host", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.UsernsMode = "host"
		}, "UsernsMode host"},
		{"NetworkMode host", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.NetworkMode = "host"
		}, "NetworkMode host"},
		{"NetworkMode container", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.NetworkMode = "container:x"
		}, "NetworkMode container:x"},
		{"Devices", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.Devices = []container.DeviceMapping{{PathOnHost: "/dev/kvm", PathInContainer: "/dev/kvm"}}
		}, "Devices"},
		{"DeviceRequests", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.DeviceRequests = []container.DeviceRequest{{Driver: "nvidia", Count: -1}}
		}, "Devices"},
		{"ReadonlyRootfs", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.ReadonlyRootfs = true
		}, "ReadonlyRootfs"},
		{"VolumesFrom", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.VolumesFrom = []string{"other"}
		}, "VolumesFrom"},
		{"Links", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.Links = []string{"db:db"}
		}, "Links"},
		{"Tmpfs", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.Tmpfs = map[string]string{"/tmp": ""}
		}, "Tmpfs"},
		{"Runtime", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) { hc.Runtime = "runc" }, "Runtime runc"},
		{"Tty", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) { c.Tty = true }, "Tty"},
		{"OpenStdin", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) { c.OpenStdin = true }, "OpenStdin"},
		{"AttachStdin", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			c.AttachStdin = true
		}, "OpenStdin"},
		{"MacAddress", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			c.MacAddress = "02:42:ac:11:00:02" //nolint:staticcheck // still sent by 1.41 clients
		}, "MacAddress"},
		{"negative StopTimeout", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			n := -1
			c.StopTimeout = &n
		}, "StopTimeout"},
		{"unknown log driver", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.LogConfig.Type = "syslog"
		}, "log driver syslog"},
		{"unknown log option", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.LogConfig.Config = map[string]string{"compress": "true"}
		}, "compress"},
		{"bad restart policy", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.RestartPolicy.Name = "sometimes"
		}, "restart policy"},
		{"negative ulimit", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.Ulimits = []*container.Ulimit{{Name: "nofile", Soft: -1, Hard: 10}}
		}, "ulimit nofile"},
		{"port not a number", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.PortBindings = nat.PortMap{"abc/tcp": nil}
		}, `"abc/tcp" in PortBindings`},
		{"port 0", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.PortBindings = nat.PortMap{"0/tcp": nil}
		}, `"0/tcp" in PortBindings`},
		{"port sctp", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.PortBindings = nat.PortMap{"80/sctp": nil}
		}, `"sctp" of port 80/sctp`},
		{"host port range", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.PortBindings = nat.PortMap{"80/tcp": {{HostPort: "8000-8010"}}}
		}, "host port range 8000-8010"},
		{"host port out of range", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.PortBindings = nat.PortMap{"80/tcp": {{HostPort: "65536"}}}
		}, "HostPort"},
		{"bad host address", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.PortBindings = nat.PortMap{"80/tcp": {{HostIP: "localhost", HostPort: "80"}}}
		}, "HostIp"},
		{"ports on network none", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.NetworkMode = "none"
			hc.PortBindings = nat.PortMap{"80/tcp": nil}
		}, "network none"},
		{"two networks", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.NetworkMode = "front"
			nc.EndpointsConfig = map[string]*network.EndpointSettings{"back": {}}
		}, "network back"},
		{"tmpfs mount", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.Mounts = []mount.Mount{{Type: mount.TypeTmpfs, Target: "/run"}}
		}, "mount type tmpfs"},
		{"relative bind", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.Binds = []string{"./data:/data"}
		}, "./data"},
		{"mount over /proc", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.Binds = []string{"vol:/proc/x"}
		}, "/proc"},
		{"two mounts on one target", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) {
			hc.Binds = []string{"a:/data", "/srv:/data/"}
		}, "two mounts on /data"},
		{"no Image", func(c *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig) { c.Image = "" }, "Image is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := toVMConfig("web", createReq(tt.req))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %q does not wrap ErrInvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not name %q", err, tt.msg)
			}
		})
	}
	t.Run("no config", func(t *testing.T) {
		_, _, err := toVMConfig("web", container.CreateRequest{HostConfig: &container.HostConfig{}})
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("error %v, want ErrInvalidArgument", err)
		}
	})
}

func TestToPorts(t *testing.T) {
	got, err := toPorts(nat.PortMap{
		"80/tcp": {{HostIP: "127.0.0.1", HostPort: "8080"}, {HostIP: "::1", HostPort: "8080"}},
		"53/udp": {},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []api.PortMapping{
		{GuestPort: 53, Protocol: "udp"},
		{GuestPort: 80, Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 8080},
		{GuestPort: 80, Protocol: "tcp", HostIP: "::1", HostPort: 8080},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("toPorts =\n %+v\nwant\n %+v", got, want)
	}
	// A key without a protocol is tcp, as in docker.
	got, err = toPorts(nat.PortMap{"8080": {{HostPort: "80"}}})
	if err != nil || !reflect.DeepEqual(got, []api.PortMapping{{GuestPort: 8080, Protocol: "tcp", HostPort: 80}}) {
		t.Errorf("toPorts(8080) = %+v, %v", got, err)
	}
	if got, err := toPorts(nil); err != nil || got != nil {
		t.Errorf("toPorts(nil) = %+v, %v", got, err)
	}
	for _, k := range []nat.Port{"65536/tcp", "-1/tcp", "/tcp", "80/icmp"} {
		if _, err := toPorts(nat.PortMap{k: nil}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("toPorts(%s): %v, want ErrInvalidArgument", k, err)
		}
	}
}

func TestStateOf(t *testing.T) {
	tests := []struct {
		st   api.VMState
		want string
	}{
		{api.VMState{Status: "running", Running: true}, "running"},
		{api.VMState{Status: "starting"}, "running"},
		{api.VMState{Status: "stopping", Running: true}, "running"},
		{api.VMState{Status: "running", Running: true, Paused: true}, "paused"},
		{api.VMState{Status: "restarting"}, "restarting"},
		{api.VMState{Status: "created"}, "created"},
		{api.VMState{Status: "exited", ExitCode: 3}, "exited"},
		{api.VMState{Status: "dead"}, "dead"},
		// A status docker has no word for is not shown as running.
		{api.VMState{Status: "booting"}, "exited"},
		{api.VMState{}, "exited"},
	}
	for _, tt := range tests {
		if got := stateOf(tt.st); got != tt.want {
			t.Errorf("stateOf(%+v) = %q, want %q", tt.st, got, tt.want)
		}
	}
}

func TestStatusLine(t *testing.T) {
	now := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	started := now.Add(-5 * time.Second)
	tests := []struct {
		name string
		st   api.VMState
		want string
	}{
		{"running", api.VMState{Status: "running", Running: true, StartedAt: started}, "Up 5 seconds"},
		{"paused", api.VMState{Status: "running", Running: true, Paused: true, StartedAt: started, Health: &api.Health{Status: api.HealthHealthy}}, "Up 5 seconds (Paused)"},
		{"healthy", api.VMState{Status: "running", Running: true, StartedAt: started, Health: &api.Health{Status: api.HealthHealthy}}, "Up 5 seconds (healthy)"},
		{"unhealthy", api.VMState{Status: "running", Running: true, StartedAt: started, Health: &api.Health{Status: api.HealthUnhealthy}}, "Up 5 seconds (unhealthy)"},
		{"health starting", api.VMState{Status: "running", Running: true, StartedAt: started, Health: &api.Health{Status: api.HealthStarting}}, "Up 5 seconds (health: starting)"},
		{"up for hours", api.VMState{Status: "running", Running: true, StartedAt: now.Add(-3 * time.Hour)}, "Up 3 hours"},
		{"exited", api.VMState{Status: "exited", ExitCode: 3, StartedAt: now.Add(-time.Hour), FinishedAt: now.Add(-2 * time.Minute)}, "Exited (3) 2 minutes ago"},
		{"exited, no finish time", api.VMState{Status: "exited", ExitCode: 137}, "Exited (137)"},
		{"restarting", api.VMState{Status: "restarting", ExitCode: 1, FinishedAt: now.Add(-10 * time.Second)}, "Restarting (1) 10 seconds ago"},
		{"created", api.VMState{Status: "created"}, "Created"},
		{"dead", api.VMState{Status: "dead"}, "Dead"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := statusLine(tt.st, now); got != tt.want {
				t.Errorf("statusLine = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseUnixTime(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
	}{
		{"1700000000.5", time.Unix(1700000000, 500*int64(time.Millisecond))},
		{"1700000000", time.Unix(1700000000, 0)},
		{"1700000000.000000001", time.Unix(1700000000, 1)},
		// Digits past nanoseconds are dropped.
		{"1700000000.1234567891", time.Unix(1700000000, 123456789)},
		{"0", time.Unix(0, 0)},
	}
	for _, tt := range tests {
		got, err := parseUnixTime(tt.in)
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseUnixTime(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "yesterday", "1.x", "2024-01-01T00:00:00Z", "1e9"} {
		if _, err := parseUnixTime(bad); err == nil {
			t.Errorf("parseUnixTime(%q) accepted", bad)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1.41", "1.41", 0},
		{"1.40", "1.41", -1},
		{"1.41", "1.40", 1},
		// Numbers, not strings: 1.9 is before 1.41.
		{"1.9", "1.41", -1},
		{"1.41", "1.9", 1},
		{"2.0", "1.99", 1},
		{"1.41", "1.41.0", 0},
		{"1.41", "1.41.1", -1},
		{"1.24", "1.41", -1},
	}
	for _, tt := range tests {
		if got := compareVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("compareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestMergeEnv(t *testing.T) {
	base := []string{"PATH=/usr/bin", "A=1", "LANG=C"}
	keep := slices.Clone(base)
	got := mergeEnv(base, []string{"A=2", "NEW=x=y", "LANG="})
	want := []string{"PATH=/usr/bin", "A=2", "LANG=", "NEW=x=y"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mergeEnv = %q, want %q", got, want)
	}
	if !reflect.DeepEqual(base, keep) {
		t.Errorf("mergeEnv changed its base: %q", base)
	}
	// A key that is a prefix of another is its own variable.
	if got := mergeEnv([]string{"AB=1"}, []string{"A=2"}); !reflect.DeepEqual(got, []string{"AB=1", "A=2"}) {
		t.Errorf("mergeEnv(AB, A) = %q", got)
	}
	if got := mergeEnv(nil, nil); got == nil || len(got) != 0 {
		t.Errorf("mergeEnv(nil, nil) = %#v, want an empty list", got)
	}
}

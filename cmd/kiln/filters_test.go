package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

func TestPsFilters(t *testing.T) {
	web := api.VM{ID: "aaaa1111", Name: "web", ImageID: "sha256:feed", State: api.VMState{Status: "running", Running: true, Health: &api.Health{Status: "healthy"}},
		Config: api.VMConfig{Image: "app:latest", Network: "backend", Labels: map[string]string{"tier": "front", "team": ""},
			Mounts: []api.Mount{{Type: "volume", Source: "data", Target: "/var/lib/app"}}}}
	job := api.VM{ID: "bbbb2222", Name: "job", State: api.VMState{Status: "exited", ExitCode: 3},
		Config: api.VMConfig{Program: "/usr/local/bin/job"}, Created: time.Unix(2000, 0)}
	web.Created = time.Unix(1000, 0)
	web.Config.Ports = []api.PortMapping{{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}}
	web.ExposedPorts = []string{"80/tcp", "9000/udp"}
	tests := []struct {
		filters []string
		want    []string
	}{
		{[]string{"label=tier"}, []string{"web"}},
		{[]string{"label=tier=front"}, []string{"web"}},
		{[]string{"label=tier=back"}, nil},
		{[]string{"label=team="}, []string{"web"}},
		{[]string{"ancestor=app"}, []string{"web"}},
		{[]string{"ancestor=app:latest"}, []string{"web"}},
		{[]string{"ancestor=feed"}, []string{"web"}},
		{[]string{"exited=3"}, []string{"job"}},
		{[]string{"exited=0"}, nil},
		{[]string{"health=healthy"}, []string{"web"}},
		{[]string{"health=none"}, []string{"job"}},
		{[]string{"network=backend"}, []string{"web"}},
		{[]string{"network=user"}, []string{"job"}},
		{[]string{"volume=data"}, []string{"web"}},
		{[]string{"volume=/var/lib/app"}, []string{"web"}},
		{[]string{"status=exited", "name=j"}, []string{"job"}},
		// Values of one key: any; keys: all.
		{[]string{"name=web", "name=job"}, []string{"web", "job"}},
		{[]string{"label=tier", "status=exited"}, nil},
		{[]string{"publish=80"}, []string{"web"}},
		{[]string{"publish=80/udp"}, nil},
		{[]string{"publish=9000/udp"}, nil}, // exposed, not published
		{[]string{"expose=9000/udp"}, []string{"web"}},
		{[]string{"expose=70-90"}, []string{"web"}},
		{[]string{"before=job"}, []string{"web"}},
		{[]string{"since=web"}, []string{"job"}},
		{[]string{"since=aaaa"}, []string{"job"}},
	}
	for _, tt := range tests {
		f, err := parseFilters(tt.filters)
		if err != nil {
			t.Fatalf("parseFilters(%q): %v", tt.filters, err)
		}
		if err := f.Resolve([]api.VM{web, job}); err != nil {
			t.Fatalf("Resolve(%q): %v", tt.filters, err)
		}
		var got []string
		for _, v := range []api.VM{web, job} {
			if f.Match(v) {
				got = append(got, v.Name)
			}
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("--filter %q matched %v, want %v", tt.filters, got, tt.want)
		}
	}
	for _, bad := range []string{"bogus=1", "label", "exited=x", "publish=http", "expose=90-80", "publish=80/sctp", "before="} {
		_, err := parseFilters([]string{bad})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), bad) {
			t.Errorf("parseFilters(%q) = %v, want an invalid-argument error naming it", bad, err)
		}
	}
}

func TestFormatTemplates(t *testing.T) {
	rows := []psRow{{ID: "aaa", Name: "web", State: "running"}, {ID: "bbb", Name: "database", State: "exited"}}
	for _, tt := range []struct{ format, want string }{
		{"{{.Name}} {{upper .State}}", "web RUNNING\ndatabase EXITED\n"},
		{"{{json .Name}}", "\"web\"\n\"database\"\n"},
		{`{{join (split .Name "a") "-"}}`, "web\nd-t-b-se\n"},
		{"{{title .State}}", "Running\nExited\n"},
		{"table {{.Name}}\\t{{.State}}", "NAME       STATE\nweb        running\ndatabase   exited\n"},
	} {
		var b strings.Builder
		if err := execTemplate(&b, tt.format, rows); err != nil {
			t.Fatalf("%q: %v", tt.format, err)
		}
		if b.String() != tt.want {
			t.Errorf("--format %q:\n got %q\nwant %q", tt.format, b.String(), tt.want)
		}
	}
	for _, bad := range []string{"{{.Name", "table"} {
		if err := execTemplate(&strings.Builder{}, bad, rows); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("--format %q: %v, want an invalid-argument error", bad, err)
		}
	}
}

func TestEventFilters(t *testing.T) {
	vms := map[string]api.VM{
		"aaaa": {ID: "aaaa", Name: "web", Config: api.VMConfig{Image: "app:1", Labels: map[string]string{"tier": "front"}}},
		"bbbb": {ID: "bbbb", Name: "job", Config: api.VMConfig{Program: "/bin/job"}},
	}
	lookups := 0
	lookup := func(id string) api.VM { lookups++; return vms[id] }
	events := []api.Event{{ID: "aaaa", Name: "web", Action: "started"}, {ID: "bbbb", Name: "job", Action: "died"}, {ID: "aaaa", Name: "web", Action: "died"}}
	for _, tt := range []struct {
		filters []string
		want    int
	}{
		{nil, 3},
		{[]string{"event=died"}, 2},
		{[]string{"vm=web"}, 2},
		{[]string{"container=bbb"}, 1},
		{[]string{"label=tier=front", "event=died"}, 1},
		{[]string{"image=app:1"}, 2},
		{[]string{"type=vm"}, 3},
		{[]string{"type=image"}, 0},
	} {
		match, err := parseEventFilters(tt.filters, lookup)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range events {
			if match(e) {
				n++
			}
		}
		if n != tt.want {
			t.Errorf("--filter %q matched %d events, want %d", tt.filters, n, tt.want)
		}
	}
	if _, err := parseEventFilters([]string{"colour=red"}, lookup); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "colour=red") {
		t.Errorf("bad filter: %v", err)
	}
}

func TestPsFilterNamesAMissingVM(t *testing.T) {
	f, err := parseFilters([]string{"before=nosuch"})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Resolve([]api.VM{{ID: "aaaa", Name: "web"}}); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("before= a missing VM: %v, want not found naming it", err)
	}
}

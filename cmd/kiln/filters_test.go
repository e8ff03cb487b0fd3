package main

import (
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

func TestPsFilters(t *testing.T) {
	web := api.VM{ID: "aaaa1111", Name: "web", ImageID: "sha256:feed", State: api.VMState{Status: "running", Running: true, Health: &api.Health{Status: "healthy"}},
		Config: api.VMConfig{Image: "app:latest", Network: "backend", Labels: map[string]string{"tier": "front", "team": ""},
			Mounts: []api.Mount{{Type: "volume", Source: "data", Target: "/var/lib/app"}}}}
	job := api.VM{ID: "bbbb2222", Name: "job", State: api.VMState{Status: "exited", ExitCode: 3},
		Config: api.VMConfig{Program: "/usr/local/bin/job"}}
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
	}
	for _, tt := range tests {
		match, err := parseFilters(tt.filters)
		if err != nil {
			t.Fatalf("parseFilters(%q): %v", tt.filters, err)
		}
		var got []string
		for _, v := range []api.VM{web, job} {
			if match(v) {
				got = append(got, v.Name)
			}
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("--filter %q matched %v, want %v", tt.filters, got, tt.want)
		}
	}
	for _, bad := range []string{"bogus=1", "label", "exited=x"} {
		_, err := parseFilters([]string{bad})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), bad) {
			t.Errorf("parseFilters(%q) = %v, want an invalid-argument error naming it", bad, err)
		}
	}
}

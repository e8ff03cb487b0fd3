package main

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

func TestHealthFlags(t *testing.T) {
	for _, tc := range []struct {
		name      string
		f         healthFlags
		want      *api.HealthConfig
		onFailure string
		bad       bool
	}{
		{"nothing: the image's", healthFlags{onFailure: "none"}, nil, "", false},
		{"command and timings", healthFlags{cmd: "true", interval: time.Second, retries: 2, onFailure: "kill"},
			&api.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: api.Duration(time.Second), Retries: 2}, "kill", false},
		{"timings over the image's command", healthFlags{timeout: time.Second, onFailure: "none"},
			&api.HealthConfig{Timeout: api.Duration(time.Second)}, "", false},
		{"disabled", healthFlags{none: true, onFailure: "none"}, &api.HealthConfig{Test: []string{"NONE"}}, "", false},
		{"disabled with a command", healthFlags{none: true, cmd: "true", onFailure: "none"}, nil, "", true},
		{"negative interval", healthFlags{interval: -time.Second, onFailure: "none"}, nil, "", true},
		{"negative retries", healthFlags{retries: -1, onFailure: "none"}, nil, "", true},
		{"unknown action", healthFlags{onFailure: "explode"}, nil, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, onFailure, err := tc.f.config()
			if tc.bad {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("got %v, want an invalid-argument error", err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) || onFailure != tc.onFailure {
				t.Fatalf("got %+v %q %v, want %+v %q", got, onFailure, err, tc.want, tc.onFailure)
			}
		})
	}
}

func TestSplitVMPath(t *testing.T) {
	for _, tc := range []struct {
		in     string
		vm, p  string
		inside bool
	}{
		{"web:/etc/app", "web", "/etc/app", true},
		{"web:", "web", "", true},
		{"./web:x", "", "./web:x", false},
		{"/abs/path", "", "/abs/path", false},
		{":/x", "", ":/x", false},
		{"-", "", "-", false},
	} {
		vm, p, inside := splitVMPath(tc.in)
		if vm != tc.vm || p != tc.p || inside != tc.inside {
			t.Errorf("splitVMPath(%q) = %q %q %v, want %q %q %v", tc.in, vm, p, inside, tc.vm, tc.p, tc.inside)
		}
	}
}

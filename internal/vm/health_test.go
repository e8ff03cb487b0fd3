package vm

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

func TestHealthConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    *HealthConfig
		ok   bool
	}{
		{"nil", nil, true},
		{"shell", &HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: api.Duration(time.Second)}, true},
		{"exec", &HealthConfig{Test: []string{"CMD", "/bin/true"}}, true},
		{"none", &HealthConfig{Test: []string{"NONE"}}, true},
		{"inherit timings only", &HealthConfig{Retries: 2}, true},
		{"no command", &HealthConfig{Test: []string{"CMD-SHELL", " "}}, false},
		{"unknown form", &HealthConfig{Test: []string{"RUN", "x"}}, false},
		{"negative interval", &HealthConfig{Interval: api.Duration(-time.Second)}, false},
		{"negative start", &HealthConfig{StartPeriod: -1}, false},
		{"negative retries", &HealthConfig{Retries: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateHealth(tc.h)
			if tc.ok != (err == nil) || err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Validate: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestMergeHealth(t *testing.T) {
	img := &HealthConfig{Test: []string{"CMD", "check"}, Interval: api.Duration(10 * time.Second), Timeout: api.Duration(3 * time.Second), Retries: 5}
	for _, tc := range []struct {
		name       string
		user, want *HealthConfig
	}{
		{"image only", nil, img},
		{"user interval over the image's", &HealthConfig{Interval: api.Duration(time.Second)},
			&HealthConfig{Test: []string{"CMD", "check"}, Interval: api.Duration(time.Second), Timeout: api.Duration(3 * time.Second), Retries: 5}},
		{"user command, image timings", &HealthConfig{Test: []string{"CMD-SHELL", "x"}},
			&HealthConfig{Test: []string{"CMD-SHELL", "x"}, Interval: api.Duration(10 * time.Second), Timeout: api.Duration(3 * time.Second), Retries: 5}},
		{"disabled", &HealthConfig{Test: []string{"NONE"}},
			&HealthConfig{Test: []string{"NONE"}, Interval: api.Duration(10 * time.Second), Timeout: api.Duration(3 * time.Second), Retries: 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mergeHealth(tc.user, img); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if mergeHealth(nil, nil) != nil {
		t.Error("no check from nothing")
	}
	if HealthEnabled(&HealthConfig{Test: []string{"NONE"}}) || HealthEnabled(nil) {
		t.Error("NONE or nil enabled")
	}
}

package vm

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"kiln.dev/kiln/internal/errdefs"
)

func TestHealthConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    *HealthConfig
		ok   bool
	}{
		{"nil", nil, true},
		{"shell", &HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: time.Second}, true},
		{"exec", &HealthConfig{Test: []string{"CMD", "/bin/true"}}, true},
		{"none", &HealthConfig{Test: []string{"NONE"}}, true},
		{"inherit timings only", &HealthConfig{Retries: 2}, true},
		{"no command", &HealthConfig{Test: []string{"CMD-SHELL", " "}}, false},
		{"unknown form", &HealthConfig{Test: []string{"RUN", "x"}}, false},
		{"negative interval", &HealthConfig{Interval: -time.Second}, false},
		{"negative start", &HealthConfig{StartPeriod: -1}, false},
		{"negative retries", &HealthConfig{Retries: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.h.Validate()
			if tc.ok != (err == nil) || err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Validate: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestMergeHealth(t *testing.T) {
	img := &HealthConfig{Test: []string{"CMD", "check"}, Interval: 10 * time.Second, Timeout: 3 * time.Second, Retries: 5}
	for _, tc := range []struct {
		name       string
		user, want *HealthConfig
	}{
		{"image only", nil, img},
		{"user interval over the image's", &HealthConfig{Interval: time.Second},
			&HealthConfig{Test: []string{"CMD", "check"}, Interval: time.Second, Timeout: 3 * time.Second, Retries: 5}},
		{"user command, image timings", &HealthConfig{Test: []string{"CMD-SHELL", "x"}},
			&HealthConfig{Test: []string{"CMD-SHELL", "x"}, Interval: 10 * time.Second, Timeout: 3 * time.Second, Retries: 5}},
		{"disabled", &HealthConfig{Test: []string{"NONE"}},
			&HealthConfig{Test: []string{"NONE"}, Interval: 10 * time.Second, Timeout: 3 * time.Second, Retries: 5}},
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
	if (&HealthConfig{Test: []string{"NONE"}}).Enabled() || (*HealthConfig)(nil).Enabled() {
		t.Error("NONE or nil enabled")
	}
}

func TestHealthTransitions(t *testing.T) {
	pass, fail := HealthResult{ExitCode: 0}, HealthResult{ExitCode: 1}
	steps := []struct {
		r       HealthResult
		inStart bool
		status  string
		changed bool
		streak  int
	}{
		{fail, true, HealthStarting, false, 0}, // in the start period: not counted
		{fail, false, HealthStarting, false, 1},
		{pass, false, HealthHealthy, true, 0},
		{fail, true, HealthHealthy, false, 1}, // counted once healthy, start period or not
		{fail, false, HealthUnhealthy, true, 2},
		{fail, false, HealthUnhealthy, false, 3},
		{pass, false, HealthHealthy, true, 0},
	}
	hs := &healthState{h: Health{Status: HealthStarting}}
	for i, s := range steps {
		status, changed := hs.record(s.r, 2, s.inStart)
		if status != s.status || changed != s.changed || hs.h.FailingStreak != s.streak {
			t.Fatalf("step %d: %s changed=%v streak=%d, want %s %v %d", i, status, changed, hs.h.FailingStreak, s.status, s.changed, s.streak)
		}
	}
	if n := len(hs.snapshot().Log); n != healthLogLen {
		t.Errorf("log keeps %d results, want %d", n, healthLogLen)
	}
	if got := healthCommand([]string{"CMD-SHELL", "test -f /x"}); !reflect.DeepEqual(got, []string{"/bin/sh", "-c", "test -f /x"}) {
		t.Errorf("CMD-SHELL argv %q", got)
	}
	if got := healthCommand([]string{"CMD", "/bin/check", "-q"}); !reflect.DeepEqual(got, []string{"/bin/check", "-q"}) {
		t.Errorf("CMD argv %q", got)
	}
}

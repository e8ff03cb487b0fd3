package supervisor

import (
	"reflect"
	"testing"
)

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

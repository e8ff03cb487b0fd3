package daemon

import (
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/supervisor"
	"kiln.dev/kiln/internal/vm"
)

func healthFromAPI(h *api.HealthConfig) *vm.HealthConfig {
	if h == nil {
		return nil
	}
	return &vm.HealthConfig{Test: h.Test, Interval: time.Duration(h.Interval), Timeout: time.Duration(h.Timeout),
		StartPeriod: time.Duration(h.StartPeriod), Retries: h.Retries}
}

func healthConfigToAPI(h *vm.HealthConfig) *api.HealthConfig {
	if h == nil {
		return nil
	}
	return &api.HealthConfig{Test: h.Test, Interval: api.Duration(h.Interval), Timeout: api.Duration(h.Timeout),
		StartPeriod: api.Duration(h.StartPeriod), Retries: h.Retries}
}

func healthToAPI(h *supervisor.Health) *api.Health {
	if h == nil {
		return nil
	}
	out := &api.Health{Status: h.Status, FailingStreak: h.FailingStreak}
	for _, r := range h.Log {
		out.Log = append(out.Log, api.HealthResult{Start: r.Start, End: r.End, ExitCode: r.ExitCode, Output: r.Output})
	}
	return out
}

package daemon

import (
	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/supervisor"
)

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

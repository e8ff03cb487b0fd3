package supervisor

import (
	"strings"
	"testing"

	"kiln.dev/kiln/internal/state"
)

func TestRunningFirst(t *testing.T) {
	recs := []*state.VM{
		{ID: "a", Status: state.StatusExited},
		{ID: "b", Status: state.StatusRunning},
		{ID: "c", Status: state.StatusCreated},
		{ID: "d", Status: state.StatusStopping},
		{ID: "e", Status: state.StatusRestarting},
	}
	runningFirst(recs)
	var got []string
	for _, r := range recs {
		got = append(got, r.ID)
	}
	if strings.Join(got, "") != "bdace" {
		t.Errorf("order %v, want b d a c e", got)
	}
}

package options

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want int // 0: an error
	}{
		{"SIGTERM", 15}, {"TERM", 15}, {"sigquit", 3}, {"15", 15}, {"SIGKILL", 9},
		{"SIGRTMIN", 34}, {"SIGRTMIN+3", 37}, {"SIGUSR1", 10}, {"9", 9},
		{"KILL", 9}, {"kill", 9}, {"usr1", 10}, {"HUP", 1}, {"64", 64}, {"rtmin+3", 37},
		{"", 0}, {"0", 0}, {"65", 0}, {"-9", 0}, {"SIG", 0}, {"SIGNOPE", 0}, {"SIGRTMIN+31", 0}, {"SIGRTMIN+x", 0},
	}
	for _, tt := range tests {
		got, err := ParseSignal(tt.in)
		if tt.want == 0 {
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.in)) {
				t.Errorf("ParseSignal(%q) = %d, %v; want an invalid-argument error naming it", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseSignal(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

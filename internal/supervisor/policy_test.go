package supervisor

import (
	"strconv"
	"testing"
	"time"

	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/testenv"
)

func TestBackoff(t *testing.T) {
	tests := []struct {
		n    int
		want time.Duration
	}{
		{-1, 100 * time.Millisecond},
		{0, 100 * time.Millisecond},
		{1, 200 * time.Millisecond},
		{2, 400 * time.Millisecond},
		{3, 800 * time.Millisecond},
		{8, 25600 * time.Millisecond},
		{9, 51200 * time.Millisecond},
		{10, time.Minute},
		{11, time.Minute},
		{63, time.Minute},
		{64, time.Minute},
		{100, time.Minute},
		{1000, time.Minute},
		{1 << 40, time.Minute},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.n), func(t *testing.T) {
			if got := Backoff(tt.n); got != tt.want {
				t.Errorf("Backoff(%d) = %v, want %v", tt.n, got, tt.want)
			}
		})
	}
	// Never decreasing, never above a minute.
	prev := Backoff(0)
	for n := 1; n < 200; n++ {
		d := Backoff(n)
		if d < prev || d > time.Minute {
			t.Fatalf("Backoff(%d) = %v after Backoff(%d) = %v", n, d, n-1, prev)
		}
		prev = d
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		in      Options
		want    Options
		wantErr string
	}{
		{
			name: "defaults",
			in:   Options{},
			want: Options{Restart: options.RestartPolicy{Name: options.RestartNo}, Log: options.LogConfig{MaxSize: 10 << 20, MaxFiles: 3}, StopGrace: 10 * time.Second},
		},
		{
			name: "kept",
			in:   Options{Restart: options.RestartPolicy{Name: options.RestartOnFailure, MaxRetries: 2}, Log: options.LogConfig{MaxSize: 4096, MaxFiles: 1}, StopGrace: time.Second},
			want: Options{Restart: options.RestartPolicy{Name: options.RestartOnFailure, MaxRetries: 2}, Log: options.LogConfig{MaxSize: 4096, MaxFiles: 1}, StopGrace: time.Second},
		},
		{
			name: "auto-remove without restart",
			in:   Options{AutoRemove: true},
			want: Options{Restart: options.RestartPolicy{Name: options.RestartNo}, AutoRemove: true, Log: options.LogConfig{MaxSize: 10 << 20, MaxFiles: 3}, StopGrace: 10 * time.Second},
		},
		{name: "auto-remove with always", in: Options{AutoRemove: true, Restart: options.RestartPolicy{Name: options.RestartAlways}}, wantErr: "conflicting options"},
		{name: "auto-remove with on-failure", in: Options{AutoRemove: true, Restart: options.RestartPolicy{Name: options.RestartOnFailure, MaxRetries: 3}}, wantErr: "on-failure:3"},
		{name: "negative grace", in: Options{StopGrace: -time.Second}, wantErr: "stop timeout"},
		{name: "unknown restart", in: Options{Restart: options.RestartPolicy{Name: "sometimes"}}, wantErr: "sometimes"},
		{name: "tiny log", in: Options{Log: options.LogConfig{MaxSize: 100}}, wantErr: "max-size 100"},
		{name: "negative max files", in: Options{Log: options.LogConfig{MaxFiles: -1}}, wantErr: "max-file -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.in
			err := o.Validate()
			o.Resolve()
			if tt.wantErr != "" {
				testenv.CheckInvalid(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if o != tt.want {
				t.Errorf("after Resolve = %+v, want %+v", o, tt.want)
			}
			// Resolving again changes nothing, and the result is valid.
			again := o
			again.Resolve()
			if err := again.Validate(); err != nil || again != o {
				t.Errorf("second Resolve = %+v, %v; want %+v", again, err, o)
			}
		})
	}
	if options.DefaultStopGrace != 10*time.Second || options.DefaultLogMaxSize != 10<<20 || options.DefaultLogMaxFiles != 3 {
		t.Errorf("defaults changed: grace %v, max-size %d, max-file %d", options.DefaultStopGrace, options.DefaultLogMaxSize, options.DefaultLogMaxFiles)
	}
}

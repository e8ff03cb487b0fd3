package options

import (
	"testing"

	"kiln.dev/kiln/internal/testenv"
)

func TestParseRestartPolicy(t *testing.T) {
	tests := []struct {
		in      string
		want    RestartPolicy
		wantErr string // a phrase the error must contain; "" for success
	}{
		{in: "", want: RestartPolicy{Name: RestartNo}},
		{in: "no", want: RestartPolicy{Name: RestartNo}},
		{in: "always", want: RestartPolicy{Name: RestartAlways}},
		{in: "unless-stopped", want: RestartPolicy{Name: RestartUnlessStopped}},
		{in: "on-failure", want: RestartPolicy{Name: RestartOnFailure}},
		{in: "on-failure:5", want: RestartPolicy{Name: RestartOnFailure, MaxRetries: 5}},
		{in: "on-failure:0", want: RestartPolicy{Name: RestartOnFailure}},
		{in: "on-failure:-1", wantErr: "0 or more"},
		{in: "on-failure:x", wantErr: "whole number"},
		{in: "on-failure:", wantErr: "whole number"},
		{in: "always:3", wantErr: "only on-failure"},
		{in: "no:1", wantErr: "only on-failure"},
		{in: "sometimes", wantErr: "unless-stopped"},
		{in: "Always", wantErr: "unless-stopped"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRestartPolicy(tt.in)
			if tt.wantErr != "" {
				testenv.CheckInvalid(t, err, `"`+tt.in+`"`, tt.wantErr)
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseRestartPolicy(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestRestartPolicyStringRoundTrips(t *testing.T) {
	tests := []struct {
		p    RestartPolicy
		want string
	}{
		{RestartPolicy{}, "no"},
		{RestartPolicy{Name: RestartNo}, "no"},
		{RestartPolicy{Name: RestartAlways}, "always"},
		{RestartPolicy{Name: RestartUnlessStopped}, "unless-stopped"},
		{RestartPolicy{Name: RestartOnFailure}, "on-failure"},
		{RestartPolicy{Name: RestartOnFailure, MaxRetries: 5}, "on-failure:5"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			s := tt.p.String()
			if s != tt.want {
				t.Fatalf("String() = %q, want %q", s, tt.want)
			}
			back, err := ParseRestartPolicy(s)
			if err != nil {
				t.Fatalf("ParseRestartPolicy(%q): %v", s, err)
			}
			want := tt.p
			if want.Name == "" {
				want.Name = RestartNo
			}
			if back != want {
				t.Errorf("ParseRestartPolicy(%q) = %+v, want %+v", s, back, want)
			}
		})
	}
}

func TestRestartPolicyValidate(t *testing.T) {
	tests := []struct {
		p  RestartPolicy
		ok bool
	}{
		{RestartPolicy{Name: RestartNo}, true},
		{RestartPolicy{Name: RestartOnFailure, MaxRetries: 3}, true},
		{RestartPolicy{Name: RestartOnFailure, MaxRetries: -2}, false},
		{RestartPolicy{Name: RestartAlways, MaxRetries: 2}, false},
		{RestartPolicy{Name: "sometimes"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.p.Name, func(t *testing.T) {
			err := tt.p.Validate()
			if tt.ok {
				if err != nil {
					t.Errorf("Validate(%+v): %v", tt.p, err)
				}
				return
			}
			testenv.CheckInvalid(t, err)
		})
	}
}

func TestShouldRestart(t *testing.T) {
	type call struct {
		exit, restarts int
		want           bool
	}
	tests := []struct {
		p     RestartPolicy
		calls []call
	}{
		{RestartPolicy{Name: RestartNo}, []call{{0, 0, false}, {1, 0, false}, {137, 5, false}}},
		{RestartPolicy{}, []call{{0, 0, false}, {1, 0, false}}},
		{RestartPolicy{Name: RestartAlways}, []call{{0, 0, true}, {1, 0, true}, {0, 1000, true}}},
		{RestartPolicy{Name: RestartUnlessStopped}, []call{{0, 0, true}, {2, 99, true}}},
		{RestartPolicy{Name: RestartOnFailure}, []call{{0, 0, false}, {1, 0, true}, {1, 1000000, true}, {-1, 3, true}}},
		{RestartPolicy{Name: RestartOnFailure, MaxRetries: 3}, []call{
			{0, 0, false}, {1, 0, true}, {1, 2, true}, {1, 3, false}, {1, 4, false}, {0, 1, false},
		}},
		{RestartPolicy{Name: RestartOnFailure, MaxRetries: 1}, []call{{1, 0, true}, {1, 1, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.p.String(), func(t *testing.T) {
			for _, c := range tt.calls {
				if got := tt.p.ShouldRestart(c.exit, c.restarts); got != c.want {
					t.Errorf("%+v.ShouldRestart(exit %d, restarts %d) = %v, want %v", tt.p, c.exit, c.restarts, got, c.want)
				}
			}
		})
	}
}

func TestParseLogOpts(t *testing.T) {
	tests := []struct {
		name    string
		opts    []string
		want    LogConfig
		wantErr string
	}{
		{name: "none", opts: nil, want: LogConfig{}},
		{name: "max-size=10m", opts: []string{"max-size=10m"}, want: LogConfig{MaxSize: 10 << 20}},
		{name: "max-size=10M", opts: []string{"max-size=10M"}, want: LogConfig{MaxSize: 10 << 20}},
		{name: "max-size=1k", opts: []string{"max-size=1k"}, want: LogConfig{MaxSize: 1 << 10}},
		{name: "max-size=2g", opts: []string{"max-size=2g"}, want: LogConfig{MaxSize: 2 << 30}},
		{name: "max-size=4096b", opts: []string{"max-size=4096b"}, want: LogConfig{MaxSize: 4096}},
		{name: "max-size=1024", opts: []string{"max-size=1024"}, want: LogConfig{MaxSize: 1024}},
		{name: "both", opts: []string{"max-size=1m", "max-file=5"}, want: LogConfig{MaxSize: 1 << 20, MaxFiles: 5}},
		{name: "last wins", opts: []string{"max-file=2", "max-file=4"}, want: LogConfig{MaxFiles: 4}},
		{name: "max-file=3", opts: []string{"max-file=3"}, want: LogConfig{MaxFiles: 3}},
		{name: "max-size=100", opts: []string{"max-size=100"}, wantErr: "at least 1k"},
		{name: "max-size=1023", opts: []string{"max-size=1023"}, wantErr: "at least 1k"},
		{name: "max-size=-1m", opts: []string{"max-size=-1m"}, wantErr: "max-size"},
		{name: "max-size=1.5m", opts: []string{"max-size=1.5m"}, wantErr: "max-size"},
		{name: "max-size=", opts: []string{"max-size="}, wantErr: "max-size"},
		{name: "max-size=m", opts: []string{"max-size=m"}, wantErr: "max-size"},
		{name: "max-file=0", opts: []string{"max-file=0"}, wantErr: "1 or more"},
		{name: "max-file=x", opts: []string{"max-file=x"}, wantErr: "max-file"},
		{name: "bogus=1", opts: []string{"bogus=1"}, wantErr: "max-size and max-file"},
		{name: "nokey", opts: []string{"nokey"}, wantErr: "key=value"},
		{name: "bad after good", opts: []string{"max-file=3", "nokey"}, wantErr: "nokey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLogOpts(tt.opts)
			if tt.wantErr != "" {
				bad := tt.opts[len(tt.opts)-1]
				testenv.CheckInvalid(t, err, `"`+bad+`"`, tt.wantErr)
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseLogOpts(%q) = %+v, %v; want %+v", tt.opts, got, err, tt.want)
			}
		})
	}
}

// A size whose byte count does not fit in int64 must be refused, not
// wrapped around to a different size.
func TestParseLogOptsOverflow(t *testing.T) {
	for _, v := range []string{
		"17179869185g",      // (2^34+1) GiB wraps to 1 GiB
		"17592186044417m",   // (2^44+1) MiB wraps to 1 MiB
		"9223372036854775k", // far over int64 bytes
	} {
		t.Run(v, func(t *testing.T) {
			got, err := ParseLogOpts([]string{"max-size=" + v})
			if err == nil {
				t.Fatalf("regression: policy.go ParseBytes: n*mult overflows; max-size=%s is accepted as %d bytes", v, got.MaxSize)
			}
			testenv.CheckInvalid(t, err, "max-size")
		})
	}
}

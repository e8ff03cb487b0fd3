package runtime

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/vmm"
)

// checkInvalid fails unless err is an ErrInvalidArgument that mentions each
// of subs.
func checkInvalid(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one mentioning %q", subs)
	}
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("error %q is not ErrInvalidArgument", err)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

func TestParseMemory(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr string
	}{
		{in: "256m", want: 256},
		{in: "256M", want: 256},
		{in: "256mb", want: 256},
		{in: "1g", want: 1024},
		{in: "1G", want: 1024},
		{in: "1GB", want: 1024},
		{in: "512MiB", want: 512},
		{in: "2gib", want: 2048},
		{in: "1t", want: 1 << 20},
		{in: "1.5g", want: 1536},
		{in: "0.5g", want: 512},
		{in: " 64m ", want: 64},
		{in: "1048576k", want: 1024},
		{in: "1k", wantErr: "below 1m"},
		{in: "100k", wantErr: "below 1m"},
		{in: "1024", wantErr: "below 1m"}, // bytes by default
		{in: "268435456", want: 256},
		{in: "268435456b", want: 256},
		{in: "0", want: 0},
		{in: "0m", want: 0},
		{in: "99999999t", want: math.MaxInt32}, // clamped; Validate rejects it against the host
		{in: "", wantErr: `""`},
		{in: "abc", wantErr: `"abc"`},
		{in: "-1m", wantErr: `"-1m"`},
		{in: "m", wantErr: `"m"`},
		{in: "g1", wantErr: `"g1"`},
		{in: "1x", wantErr: `"1x"`},
		{in: "1 g", wantErr: `"1 g"`},
		{in: "infm", wantErr: `"infm"`},
		{in: "NaN", wantErr: `"NaN"`},
		{in: "1e400", wantErr: `"1e400"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseMemory(tt.in)
			if tt.wantErr != "" {
				checkInvalid(t, err, tt.wantErr)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseMemory(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatMiB(t *testing.T) {
	for mib, want := range map[int]string{0: "0m", 1: "1m", 256: "256m", 1024: "1g", 1536: "1536m", 4096: "4g", 1 << 20: "1024g"} {
		if got := FormatMiB(mib); got != want {
			t.Errorf("FormatMiB(%d) = %q, want %q", mib, got, want)
		}
		if mib > 0 {
			if back, err := ParseMemory(want); err != nil || back != mib {
				t.Errorf("ParseMemory(FormatMiB(%d)) = %d, %v", mib, back, err)
			}
		}
	}
}

func FuzzParseMemory(f *testing.F) {
	for _, s := range []string{"256m", "1g", "1.5G", "512MiB", "1t", "0", "100k", "-1m", "", "abc", "1e3m", "0x1p20", "9e99t", "1b", "kib"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseMemory(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseMemory(%q) error %v is not ErrInvalidArgument", s, err)
			}
			return
		}
		if v < 0 || v > math.MaxInt32 {
			t.Fatalf("ParseMemory(%q) = %d, out of range", s, v)
		}
		if v > 0 {
			f := FormatMiB(v)
			back, err := ParseMemory(f)
			if err != nil || back != v {
				t.Fatalf("ParseMemory(%q) = %d, but ParseMemory(FormatMiB(%d) = %q) = %d, %v", s, v, v, f, back, err)
			}
		}
	})
}

func TestParseUser(t *testing.T) {
	tests := []struct {
		in       string
		uid, gid uint32
		checkGID bool
		wantErr  string
	}{
		{in: "", uid: 0, gid: 0, checkGID: true},
		// A bare uid: the group is not pinned here (docker would give
		// gid 0 when the image has no passwd entry; kiln takes the uid).
		{in: "1000", uid: 1000},
		{in: "1000:50", uid: 1000, gid: 50, checkGID: true},
		{in: "0:0", uid: 0, gid: 0, checkGID: true},
		{in: "4294967295:1", uid: math.MaxUint32, gid: 1, checkGID: true},
		{in: "bob", wantErr: `"bob"`},
		{in: "bob:staff", wantErr: `"bob:staff"`},
		{in: "1:x", wantErr: `"1:x"`},
		{in: "1:", wantErr: `"1:"`},
		{in: ":1", wantErr: `":1"`},
		{in: "-1", wantErr: `"-1"`},
		{in: "4294967296", wantErr: `"4294967296"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			uid, gid, err := ParseUser(tt.in)
			if tt.wantErr != "" {
				checkInvalid(t, err, tt.wantErr)
				return
			}
			if err != nil || uid != tt.uid || (tt.checkGID && gid != tt.gid) {
				t.Fatalf("ParseUser(%q) = %d, %d, %v; want %d, %d", tt.in, uid, gid, err, tt.uid, tt.gid)
			}
		})
	}
}

func lookupFrom(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseEnv(t *testing.T) {
	host := lookupFrom(map[string]string{"HOME": "/root", "EMPTY": "", "TERM": "xterm"})
	tests := []struct {
		name    string
		in      []string
		want    []string
		wantErr string
	}{
		{name: "none", in: nil, want: nil},
		{name: "key=value kept as is", in: []string{"A=1", "B=x=y", "C="}, want: []string{"A=1", "B=x=y", "C="}},
		{name: "bare key from host", in: []string{"HOME", "A=1", "TERM"}, want: []string{"HOME=/root", "A=1", "TERM=xterm"}},
		{name: "bare key set empty on host", in: []string{"EMPTY"}, want: []string{"EMPTY="}},
		{name: "bare key absent from host dropped", in: []string{"NOPE", "A=1"}, want: []string{"A=1"}},
		{name: "host value not used for key=value", in: []string{"HOME=/home/x"}, want: []string{"HOME=/home/x"}},
		{name: "empty key", in: []string{"=x"}, wantErr: `"=x"`},
		{name: "empty entry", in: []string{""}, wantErr: `""`},
		{name: "space in key", in: []string{"A B=1"}, wantErr: `"A B=1"`},
		{name: "NUL in key", in: []string{"A\x00B=1"}, wantErr: "invalid environment variable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEnv(tt.in, host)
			if tt.wantErr != "" {
				checkInvalid(t, err, tt.wantErr)
				return
			}
			if err != nil || fmt.Sprint(got) != fmt.Sprint(tt.want) || len(got) != len(tt.want) {
				t.Fatalf("ParseEnv(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseEnvFile(t *testing.T) {
	host := lookupFrom(map[string]string{"HOSTVAR": "from host"})
	tests := []struct {
		name    string
		content string
		want    []string
		wantErr []string
	}{
		{name: "empty", content: "", want: nil},
		{
			name:    "comments, blanks, bare keys",
			content: "# a comment\n\nFOO=bar\n   # indented comment\n\tBAZ=qux quux\nHOSTVAR\nMISSING\nURL=http://x/?a=b#frag\n",
			want:    []string{"FOO=bar", "BAZ=qux quux", "HOSTVAR=from host", "URL=http://x/?a=b#frag"},
		},
		{name: "no final newline", content: "A=1\nB=2", want: []string{"A=1", "B=2"}},
		{name: "bad line reports its number", content: "A=1\n\n# c\nbad key=1\n", wantErr: []string{"line 4", "app.env", "bad key=1"}},
		{name: "empty key", content: "A=1\n=value\n", wantErr: []string{"line 2", "app.env"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEnvFile(strings.NewReader(tt.content), "app.env", host)
			if tt.wantErr != nil {
				checkInvalid(t, err, tt.wantErr...)
				return
			}
			if err != nil || fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tt.want) {
				t.Fatalf("ParseEnvFile = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestParseUlimit(t *testing.T) {
	tests := []struct {
		in      string
		want    agent.Rlimit
		wantErr string
	}{
		{in: "nofile=1024:4096", want: agent.Rlimit{Name: "nofile", Soft: 1024, Hard: 4096}},
		{in: "nofile=1024", want: agent.Rlimit{Name: "nofile", Soft: 1024, Hard: 1024}},
		{in: "nproc=unlimited", want: agent.Rlimit{Name: "nproc", Soft: math.MaxUint64, Hard: math.MaxUint64}},
		{in: "core=0:unlimited", want: agent.Rlimit{Name: "core", Soft: 0, Hard: math.MaxUint64}},
		{in: "stack=-1", want: agent.Rlimit{Name: "stack", Soft: math.MaxUint64, Hard: math.MaxUint64}},
		{in: "bogus=1", wantErr: "bogus"},
		{in: "nofile=5:1", wantErr: "soft limit above hard"},
		{in: "nofile=unlimited:5", wantErr: "soft limit above hard"},
		{in: "nofile", wantErr: "name=soft"},
		{in: "nofile=", wantErr: "soft limit"},
		{in: "nofile=x", wantErr: "soft limit"},
		{in: "nofile=1:", wantErr: "hard limit"},
		{in: "nofile=1:y", wantErr: "hard limit"},
		{in: "nofile=-2", wantErr: "soft limit"},
		{in: "NOFILE=1", wantErr: "NOFILE"},
		{in: "=1", wantErr: `"=1"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseUlimit(tt.in)
			if tt.wantErr != "" {
				checkInvalid(t, err, tt.wantErr, tt.in)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseUlimit(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func FuzzParseUlimit(f *testing.F) {
	for _, s := range []string{"nofile=1024:4096", "nofile=1024", "nproc=unlimited", "bogus=1", "nofile=5:1", "nofile", "core=-1:-1", "=", "nofile=1:2:3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseUlimit(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseUlimit(%q) error %v is not ErrInvalidArgument", s, err)
			}
			return
		}
		if _, ok := agent.RlimitResources[r.Name]; !ok {
			t.Fatalf("ParseUlimit(%q) gave unknown resource %q", s, r.Name)
		}
		if r.Soft > r.Hard {
			t.Fatalf("ParseUlimit(%q) = %+v: soft above hard", s, r)
		}
		back, err := ParseUlimit(fmt.Sprintf("%s=%d:%d", r.Name, r.Soft, r.Hard))
		if err != nil || back != r {
			t.Fatalf("ParseUlimit(%q) = %+v, but re-parsing it gives %+v, %v", s, r, back, err)
		}
		// What kiln-init receives passes the agent's own check.
		spec := agent.Spec{Version: agent.Version, Args: []string{"x"}, Rlimits: []agent.Rlimit{r}}
		if err := spec.Validate(); err != nil {
			t.Fatalf("ParseUlimit(%q) = %+v, which agent.Spec.Validate rejects: %v", s, r, err)
		}
	})
}

func TestSpecValidate(t *testing.T) {
	host := HostLimits{MemoryMiB: 4096, CPUs: 2}
	t.Run("defaults", func(t *testing.T) {
		s := Spec{Program: "/bin/hello"}
		if err := s.Validate(host); err != nil {
			t.Fatal(err)
		}
		if s.MemoryMiB != 256 || s.CPUs != 1 || s.BootTimeout != DefaultBootTimeout || s.Accel != vmm.AccelAuto {
			t.Errorf("defaults not filled: %+v", s)
		}
	})
	t.Run("explicit values kept", func(t *testing.T) {
		s := Spec{Name: "web-1.a_b", Program: "/bin/hello", MemoryMiB: 4096, CPUs: 2, Accel: vmm.AccelTCG,
			BootTimeout: 5 * time.Second, WorkingDir: "/srv", User: "1000:1000", Env: []string{"A=1", "B="},
			Rlimits: []agent.Rlimit{{Name: "nofile", Soft: 10, Hard: 10}}}
		if err := s.Validate(host); err != nil {
			t.Fatal(err)
		}
		if s.MemoryMiB != 4096 || s.CPUs != 2 || s.Accel != vmm.AccelTCG || s.BootTimeout != 5*time.Second {
			t.Errorf("explicit values changed: %+v", s)
		}
	})
	t.Run("minimum memory", func(t *testing.T) {
		s := Spec{Program: "/p", MemoryMiB: MinMemoryMiB}
		if err := s.Validate(host); err != nil {
			t.Error(err)
		}
	})
	tests := []struct {
		name    string
		spec    Spec
		wantErr []string
	}{
		{"no program", Spec{}, []string{"no program"}},
		{"memory below minimum", Spec{Program: "/p", MemoryMiB: 32}, []string{"32m", "64m"}},
		{"memory negative", Spec{Program: "/p", MemoryMiB: -1}, []string{"memory"}},
		{"memory above host", Spec{Program: "/p", MemoryMiB: 8192}, []string{"8g", "4096"}},
		{"cpus above host", Spec{Program: "/p", CPUs: 3}, []string{"cpus 3", "2"}},
		{"cpus negative", Spec{Program: "/p", CPUs: -1}, []string{"cpus -1"}},
		{"relative workdir", Spec{Program: "/p", WorkingDir: "srv/app"}, []string{`"srv/app"`}},
		{"bad name", Spec{Program: "/p", Name: "my vm"}, []string{`"my vm"`}},
		{"name starting with dash", Spec{Program: "/p", Name: "-x"}, []string{`"-x"`}},
		{"env without =", Spec{Program: "/p", Env: []string{"A=1", "NOVALUE"}}, []string{`"NOVALUE"`}},
		{"env with empty key", Spec{Program: "/p", Env: []string{"=v"}}, []string{`"=v"`}},
		{"bad user", Spec{Program: "/p", User: "bob"}, []string{`"bob"`}},
		{"bad accel", Spec{Program: "/p", Accel: "hvf"}, []string{`"hvf"`}},
		{"negative boot timeout", Spec{Program: "/p", BootTimeout: -time.Second}, []string{"boot timeout"}},
		{"unknown rlimit", Spec{Program: "/p", Rlimits: []agent.Rlimit{{Name: "files", Soft: 1, Hard: 1}}}, []string{`"files"`}},
		{"rlimit soft above hard", Spec{Program: "/p", Rlimits: []agent.Rlimit{{Name: "nofile", Soft: 2, Hard: 1}}}, []string{"nofile"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.spec
			checkInvalid(t, s.Validate(host), tt.wantErr...)
		})
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "web", "Web-1", "a.b_c-d", "0", strings.Repeat("x", 63)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", ".a", "_a", "a b", "a/b", "../a", "a:b", strings.Repeat("x", 64)} {
		checkInvalid(t, ValidateName(bad), fmt.Sprintf("%q", bad))
	}
}

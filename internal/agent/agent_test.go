package agent

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseRecords(t *testing.T) {
	started := Record{Version: Version, Kind: KindStarted, PID: 42, Uptime: 0.25}
	exit := Record{Version: Version, Kind: KindExit, ExitCode: 137, Signal: 9}
	const (
		startedLine = `{"version":1,"kind":"started","pid":42,"uptime":0.25,"exitCode":0}`
		exitLine    = `{"version":1,"kind":"exit","exitCode":137,"signal":9}`
	)
	tests := []struct {
		name    string
		data    string
		want    []Record
		wantErr string
	}{
		{name: "empty", data: "", want: nil},
		{name: "two lines", data: startedLine + "\n" + exitLine + "\n", want: []Record{started, exit}},
		{name: "last line complete without newline", data: startedLine + "\n" + exitLine, want: []Record{started, exit}},
		{name: "truncated last line ignored", data: startedLine + "\n" + exitLine[:20], want: []Record{started}},
		{name: "only a truncated line", data: `{"version":1,"ki`, want: nil},
		{name: "blank lines skipped", data: "\n\n" + startedLine + "\n\n" + exitLine + "\n\n", want: []Record{started, exit}},
		{name: "CRLF line endings", data: startedLine + "\r\n" + exitLine + "\r\n", want: []Record{started, exit}},
		{name: "malformed complete line", data: startedLine + "\n{not json}\n" + exitLine + "\n", wantErr: "parsing status record"},
		{name: "malformed line then truncated", data: "garbage\n" + exitLine[:10], wantErr: "garbage"},
		{name: "wrong version", data: `{"version":2,"kind":"exit","exitCode":0}` + "\n", wantErr: "version 2"},
		{name: "missing version", data: `{"kind":"exit","exitCode":0}` + "\n", wantErr: "version 0"},
		{name: "wrong version on unterminated last line", data: startedLine + "\n" + `{"version":9,"kind":"exit"}`, wantErr: "version 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRecords([]byte(tt.data))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseRecords = %+v, nil; want error containing %q", got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("ParseRecords error %q, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRecords: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseRecords =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func TestExitCodeFor(t *testing.T) {
	tests := []struct{ status, signal, want int }{
		{0, 0, 0},
		{1, 0, 1},
		{255, 0, 255},
		{0, 9, 137},  // SIGKILL
		{0, 15, 143}, // SIGTERM
		{0, 2, 130},  // SIGINT, as a shell reports ^C
		{3, 6, 134},  // a signal wins over a status
	}
	for _, tt := range tests {
		if got := ExitCodeFor(tt.status, tt.signal); got != tt.want {
			t.Errorf("ExitCodeFor(%d, %d) = %d, want %d", tt.status, tt.signal, got, tt.want)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	valid := func() Spec {
		return Spec{Version: Version, Args: []string{"/usr/local/bin/hello", "-v"},
			Rlimits: []Rlimit{{Name: "nofile", Soft: 1024, Hard: 4096}, {Name: "core", Soft: 0, Hard: 0}}}
	}
	tests := []struct {
		name    string
		mod     func(*Spec)
		wantErr string
	}{
		{"valid", func(*Spec) {}, ""},
		{"soft equals hard", func(s *Spec) { s.Rlimits = []Rlimit{{Name: "nproc", Soft: 5, Hard: 5}} }, ""},
		{"old version", func(s *Spec) { s.Version = 0 }, "version 0"},
		{"newer version", func(s *Spec) { s.Version = Version + 1 }, "protocol version"},
		{"no args", func(s *Spec) { s.Args = nil }, "no program"},
		{"empty program", func(s *Spec) { s.Args = []string{"", "x"} }, "no program"},
		{"unknown rlimit", func(s *Spec) { s.Rlimits = append(s.Rlimits, Rlimit{Name: "files", Soft: 1, Hard: 1}) }, `"files"`},
		{"soft above hard", func(s *Spec) { s.Rlimits = []Rlimit{{Name: "stack", Soft: 10, Hard: 9}} }, "stack"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := valid()
			tt.mod(&s)
			err := s.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestRlimitResources(t *testing.T) {
	// The numbers are Linux's RLIMIT_* on x86-64 (asm-generic/resource.h).
	for name, want := range map[string]int{"cpu": 0, "stack": 3, "core": 4, "nproc": 6, "nofile": 7, "memlock": 8, "as": 9, "rttime": 15} {
		if got, ok := RlimitResources[name]; !ok || got != want {
			t.Errorf("RlimitResources[%q] = %d, %v; want %d", name, got, ok, want)
		}
	}
	seen := map[int]string{}
	for name, n := range RlimitResources {
		if other, dup := seen[n]; dup {
			t.Errorf("%s and %s both map to %d", name, other, n)
		}
		seen[n] = name
	}
}

func TestWriteLineRoundTrip(t *testing.T) {
	recs := []Record{
		{Version: Version, Kind: KindStarted, PID: 1, Uptime: 1.5},
		{Version: Version, Kind: KindError, ExitCode: 127, Error: "exec: \"nope\": not found\nsecond line"},
		{Version: Version, Kind: KindExit, ExitCode: 0},
	}
	var buf bytes.Buffer
	for _, r := range recs {
		if err := WriteLine(&buf, r); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(buf.String(), "\n"); n != len(recs) {
		t.Fatalf("%d newlines for %d records: %q", n, len(recs), buf.String())
	}
	got, err := ParseRecords(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, recs) {
		t.Errorf("round trip =\n %+v\nwant\n %+v", got, recs)
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestWriteLineErrors(t *testing.T) {
	if err := WriteLine(&bytes.Buffer{}, make(chan int)); err == nil {
		t.Error("WriteLine(chan) = nil, want an encoding error")
	}
	boom := errors.New("boom")
	if err := WriteLine(failWriter{boom}, Request{Version: Version, Op: OpStop}); !errors.Is(err, boom) {
		t.Errorf("WriteLine to failing writer = %v, want it to wrap %v", err, boom)
	}
}

func FuzzParseRecords(f *testing.F) {
	f.Add([]byte(`{"version":1,"kind":"started","pid":42}` + "\n" + `{"version":1,"kind":"exit","exitCode":3}`))
	f.Add([]byte("\n\n{\"version\":1"))
	f.Add([]byte(`{"version":2}` + "\n"))
	f.Add([]byte("garbage\n"))
	f.Add([]byte(`{"version":1.0,"kind":"exit"}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := ParseRecords(data)
		for i, r := range recs {
			if r.Version != Version {
				t.Fatalf("record %d has version %d (err %v)", i, r.Version, err)
			}
		}
		if err == nil && bytes.Count(data, []byte("\n")) == 0 && len(recs) > 1 {
			t.Fatalf("%d records from a single line", len(recs))
		}
	})
}

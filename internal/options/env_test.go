package options

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/testenv"
)

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
				testenv.CheckInvalid(t, err, tt.wantErr)
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
				testenv.CheckInvalid(t, err, tt.wantErr...)
				return
			}
			if err != nil || fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tt.want) {
				t.Fatalf("ParseEnvFile = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
func TestMergeEnv(t *testing.T) {
	for _, tc := range []struct {
		base, add, want []string
	}{
		{[]string{"A=1", "B=2"}, nil, []string{"A=1", "B=2"}},
		{[]string{"A=1", "B=2"}, []string{"B=3", "C=4"}, []string{"A=1", "B=3", "C=4"}},
		{nil, []string{"HOME=/root"}, []string{"HOME=/root"}},
		{[]string{"HOME=/", "PATH=/bin"}, []string{"HOME=/home/app"}, []string{"HOME=/home/app", "PATH=/bin"}},
	} {
		if got := MergeEnv(tc.base, tc.add); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("MergeEnv(%q, %q) = %q, want %q", tc.base, tc.add, got, tc.want)
		}
	}
}

// MergeEnv replaces the first of base's duplicates (the one getenv finds)
// and leaves base as it was.
func TestMergeEnvDuplicates(t *testing.T) {
	base := []string{"A=1", "A=2", "B=3"}
	got := MergeEnv(base, []string{"A=9", "C=4", "C=5"})
	if want := []string{"A=9", "A=2", "B=3", "C=5"}; !reflect.DeepEqual(got, want) {
		t.Errorf("MergeEnv = %q, want %q", got, want)
	}
	if base[0] != "A=1" {
		t.Errorf("MergeEnv changed its base: %q", base)
	}
}

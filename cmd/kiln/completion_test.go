package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestArgNouns(t *testing.T) {
	for use, want := range map[string][]string{
		"rm [-f] [-v] VM...": {"VM..."},
		"rename VM NEW_NAME": {"VM", ""},
		"cp SRC DST":         nil,
		"exec [-i] [-t] [-e K=V] VM COMMAND [ARG...]": {"VM", "", ""},
		"inspect [--format TEMPLATE] NETWORK...":      {"NETWORK..."},
		"run [flags] IMAGE|PROGRAM [ARG...]":          nil,
		"ps":                                          nil,
	} {
		if got := argNouns(use); !reflect.DeepEqual(got, want) {
			t.Errorf("argNouns(%q) = %q, want %q", use, got, want)
		}
	}
	if n, ok := nounAt([]string{"VM", ""}, 1); ok || n != "" {
		t.Errorf("rename's second argument completes %q", n)
	}
	if n, ok := nounAt([]string{"VM..."}, 3); !ok || n != "VM" {
		t.Errorf("rm's fourth argument: %q %v", n, ok)
	}
}

// TestCompletion completes VM, volume and kernel names from the root, as
// the shell asks (cobra's __complete).
func TestCompletion(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.loadImage("kiln-test/box:comp", dockerTestImage(t))
	for _, n := range []string{"alpha", "alpine", "beta"} {
		ok(t, "create", e.kiln("create", "--kernel", e.kernel, "--pull", "never", "--name", n, "kiln-test/box:comp", "true"))
	}
	ok(t, "volume create", e.kiln("volume", "create", "data1"))
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "rm", "al"}, []string{"alpha", "alpine"}},
		{[]string{"__complete", "start", "-a", "b"}, []string{"beta"}},
		{[]string{"__complete", "rename", "alpha", ""}, nil},
		{[]string{"__complete", "volume", "rm", "d"}, []string{"data1"}},
		{[]string{"__complete", "rmi", "kiln-test/"}, []string{"kiln-test/box:comp"}},
	} {
		r := ok(t, "complete", e.kiln(tt.args...))
		var got []string
		for _, l := range strings.Split(r.stdout, "\n") {
			if l != "" && !strings.HasPrefix(l, ":") && !strings.HasPrefix(l, "Completion ended") {
				got = append(got, strings.SplitN(l, "\t", 2)[0])
			}
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("kiln %v completes %q, want %q", tt.args, got, tt.want)
		}
	}
}

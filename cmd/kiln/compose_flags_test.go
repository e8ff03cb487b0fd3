package main

import (
	"reflect"
	"testing"
)

func TestComposeFileFlags(t *testing.T) {
	for _, tt := range []struct{ in, want []string }{
		{[]string{"compose", "-f", "a.yaml", "-f", "b.yaml", "logs", "-f"}, []string{"compose", "--file", "a.yaml", "--file", "b.yaml", "logs", "-f"}},
		{[]string{"--root", "/r", "compose", "-p", "x", "-fc.yaml", "up", "-d"}, []string{"--root", "/r", "compose", "-p", "x", "--file=c.yaml", "up", "-d"}},
		{[]string{"compose", "logs", "-f", "web"}, []string{"compose", "logs", "-f", "web"}},
		{[]string{"ps", "-f", "label=x"}, []string{"ps", "-f", "label=x"}},
		{[]string{"run", "compose", "-f"}, []string{"run", "compose", "-f"}},
	} {
		if got := composeFileFlags(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("composeFileFlags(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

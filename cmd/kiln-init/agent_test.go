//go:build linux

package main

import (
	"reflect"
	"testing"
)

func TestMergeEnv(t *testing.T) {
	for _, tc := range []struct {
		base, add, want []string
	}{
		{[]string{"A=1", "B=2"}, nil, []string{"A=1", "B=2"}},
		{[]string{"A=1", "B=2"}, []string{"B=3", "C=4"}, []string{"A=1", "B=3", "C=4"}},
		{nil, []string{"HOME=/root"}, []string{"HOME=/root"}},
		{[]string{"HOME=/", "PATH=/bin"}, []string{"HOME=/home/app"}, []string{"HOME=/home/app", "PATH=/bin"}},
	} {
		if got := mergeEnv(tc.base, tc.add); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("mergeEnv(%q, %q) = %q, want %q", tc.base, tc.add, got, tc.want)
		}
	}
}

package main

import (
	"testing"
)

func TestTemplatesOnByDefaultOffByFlagOrEnv(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  string
		want bool
	}{
		{nil, "", true},
		{nil, "1", true},
		{nil, "0", false},
		{[]string{"--templates=false"}, "", false},
		{[]string{"--templates=false"}, "1", false},
		{[]string{"--templates"}, "0", true},
	} {
		t.Setenv("KILN_TEMPLATES", tt.env)
		cmd := newDaemonCmd(&globals{})
		if err := cmd.ParseFlags(tt.args); err != nil {
			t.Fatal(err)
		}
		flag, _ := cmd.Flags().GetBool("templates")
		if got := templatesOn(cmd, flag); got != tt.want {
			t.Errorf("flags %q, $KILN_TEMPLATES=%q: templates on = %v, want %v", tt.args, tt.env, got, tt.want)
		}
	}
}

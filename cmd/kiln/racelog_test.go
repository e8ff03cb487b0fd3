package main

import (
	"strings"
	"testing"
)

// raceReports finds what the harness fails a VM test on in a daemon log.
func TestRaceReports(t *testing.T) {
	const sep = "=================="
	report := func(n string) string {
		return "WARNING: DATA RACE\nWrite at 0x" + n + " by goroutine 7:\n  main.f()\n"
	}
	for _, tc := range []struct {
		name, log string
		want      []string
	}{
		{"clean", "time=... level=INFO msg=ready\n", nil},
		{"one", "level=INFO msg=ready\n" + sep + "\n" + report("1") + sep + "\nlevel=INFO msg=more\n", []string{report("1")}},
		{"two", sep + "\n" + report("1") + sep + "\n" + sep + "\n" + report("2") + sep + "\n", []string{report("1"), report("2")}},
		{"cut short by a kill", sep + "\n" + report("3"), []string{report("3")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := raceReports(tc.log)
			if len(tc.want) == 0 {
				if got != "" {
					t.Fatalf("raceReports of a clean log = %q", got)
				}
				return
			}
			for _, w := range tc.want {
				if !strings.Contains(got, strings.TrimSuffix(w, "\n")) {
					t.Errorf("raceReports = %q, want it to hold %q", got, w)
				}
			}
			if n := strings.Count(got, "WARNING: DATA RACE"); n != len(tc.want) {
				t.Errorf("raceReports holds %d reports, want %d:\n%s", n, len(tc.want), got)
			}
		})
	}
}

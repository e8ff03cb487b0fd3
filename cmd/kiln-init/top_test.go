package main

import (
	"encoding/json"
	"os"
	"testing"
)

func TestGuestTopReadsThisHostsProcesses(t *testing.T) {
	procs, truncated := guestTop("/proc", 1<<20)
	if truncated || len(procs) == 0 {
		t.Fatalf("guestTop: %d processes, truncated %v", len(procs), truncated)
	}
	found := false
	for _, p := range procs {
		if p.PID == os.Getpid() {
			found = true
			if p.PPID != os.Getppid() || p.UID != uint32(os.Getuid()) || p.Cmd == "" || p.RSSBytes == 0 {
				t.Errorf("this process: %+v", p)
			}
		}
	}
	if !found {
		t.Error("this process is not listed")
	}
}

func TestGuestTopStaysInItsBudget(t *testing.T) {
	procs, truncated := guestTop("/proc", 300)
	b, _ := json.Marshal(procs)
	if !truncated || len(b) > 300 {
		t.Errorf("budget 300: %d bytes of JSON, truncated %v", len(b), truncated)
	}
}

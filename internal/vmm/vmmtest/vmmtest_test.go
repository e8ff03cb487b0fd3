package vmmtest

import (
	"bufio"
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/vmm"
)

func config(t *testing.T) vmm.Config {
	dir := t.TempDir()
	return vmm.Config{ID: "vm1", Dir: dir, Kernel: "/vmlinux", MemoryMiB: 64, CPUs: 1, Accel: vmm.AccelTCG,
		Ports: []vmm.Port{
			{Name: agent.PortStatus, Socket: filepath.Join(dir, "status.sock")},
			{Name: agent.PortStdout, Pipe: filepath.Join(dir, "stdout")},
		}}
}

// A run reports started, then its exit, on the status socket, and is
// gone for Attach once it ended.
func TestScriptedRun(t *testing.T) {
	b := &Backend{Script: func(string, int) Script { return Script{RunFor: 10 * time.Millisecond, ExitCode: 7} }}
	cfg := config(t)
	m, err := b.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a, err := b.Attach(cfg, nil); err != nil || a != m {
		t.Fatalf("Attach while running: %v, %v", a, err)
	}
	conn, err := net.Dial("unix", cfg.Ports[0].Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sc := bufio.NewScanner(conn)
	var kinds []string
	for sc.Scan() {
		recs, err := agent.ParseRecords(append(sc.Bytes(), '\n'))
		if err != nil || len(recs) != 1 {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		kinds = append(kinds, recs[0].Kind)
		if recs[0].Kind == agent.KindExit && recs[0].ExitCode != 7 {
			t.Errorf("exit code %d", recs[0].ExitCode)
		}
	}
	if len(kinds) != 2 || kinds[0] != agent.KindStarted || kinds[1] != agent.KindExit {
		t.Errorf("records %v", kinds)
	}
	if err := m.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m.Info().Running || b.Running() != 0 {
		t.Error("still running after its exit")
	}
	if _, err := b.Attach(cfg, nil); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Attach after the end: %v", err)
	}
}

// Kill ends a hanging run; a refused start fails Start.
func TestKillAndRefuse(t *testing.T) {
	b := &Backend{Script: func(_ string, run int) Script {
		if run == 1 {
			return Script{StartErr: ErrRefused}
		}
		return Script{Hang: true}
	}}
	cfg := config(t)
	m, _ := b.New(cfg, nil)
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(context.Background()); err != nil || m.Info().Running {
		t.Errorf("after Kill: %v, running %v", err, m.Info().Running)
	}
	m2, _ := b.New(cfg, nil)
	if err := m2.Start(context.Background()); !errors.Is(err, ErrRefused) {
		t.Errorf("refused start: %v", err)
	}
	if b.Starts("vm1") != 2 {
		t.Errorf("starts %d", b.Starts("vm1"))
	}
}

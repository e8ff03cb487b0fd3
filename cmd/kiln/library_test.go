package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/daemon"
)

// The client package carries the seed runtime's verbs (Login, Pull,
// ImageExists, Run, Logs, Wait, Inspect, List, Stop, Remove, Push), so a
// program that drives containers can drive kiln VMs instead.
func TestClientLibraryVerbs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := newTestRegistry(t)
	ref := reg.push(t, "lib/app:1", testImage(t, func(c *v1.Config) {
		c.Cmd = []string{"/bin/sh", "-c", "echo from-the-library; exit 4"}
	}, userlandLayer(t)))
	e.kiln("ps") // starts the root's daemon
	ctx := context.Background()
	cl := client.New(daemon.SocketPath(e.root))

	if ok, err := cl.ImageExists(ctx, ref); ok || err != nil {
		t.Fatalf("ImageExists before pull = %v, %v", ok, err)
	}
	if _, err := cl.Pull(ctx, ref, false); err == nil {
		t.Fatalf("Pull without credentials succeeded")
	}
	if err := cl.Login(ctx, reg.host, regUser, regPass); err != nil {
		t.Fatalf("Login: %v", err)
	}
	img, err := cl.Pull(ctx, ref, false)
	if err != nil || !strings.HasPrefix(img.ID, "sha256:") {
		t.Fatalf("Pull = %+v, %v", img, err)
	}
	if ok, err := cl.ImageExists(ctx, ref); !ok || err != nil {
		t.Fatalf("ImageExists after pull = %v, %v", ok, err)
	}

	created, err := cl.Run(ctx, api.VMConfig{Name: "lib", Image: ref, Kernel: e.kernel, Pull: "never"})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	w, err := cl.Wait(ctx, created.ID, false, nil)
	if err != nil || w.ExitCode != 4 {
		t.Fatalf("Wait = %+v, %v; want exit 4", w, err)
	}
	var out strings.Builder
	if err := cl.Logs(ctx, "lib", client.LogOptions{Tail: -1}, func(e api.LogEntry) error {
		out.WriteString(e.Line)
		return nil
	}); err != nil || out.String() != "from-the-library\n" {
		t.Errorf("Logs = %q, %v", out.String(), err)
	}
	v, err := cl.Inspect(ctx, "lib")
	if err != nil || v.State.ExitCode != 4 || v.ImageID != img.ID {
		t.Errorf("Inspect = %+v, %v", v.State, err)
	}
	if vms, err := cl.List(ctx); err != nil || len(vms) != 1 {
		t.Errorf("List = %d VMs, %v", len(vms), err)
	}

	copyRef := reg.host + "/lib/copy:1"
	if err := cl.Push(ctx, ref, copyRef, false); err != nil {
		t.Fatalf("Push: %v", err)
	}
	if err := cl.RemoveImage(ctx, ref, false); !errors.Is(err, client.ErrConflict) {
		t.Errorf("RemoveImage while a VM uses it = %v, want ErrConflict", err)
	}
	if err := cl.Stop(ctx, "lib", nil); err != nil {
		t.Errorf("Stop of an exited VM: %v", err)
	}
	if err := cl.Remove(ctx, "lib", client.RemoveOptions{}); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := cl.Inspect(ctx, "lib"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("Inspect after Remove = %v, want ErrNotFound", err)
	}
	if err := cl.RemoveImage(ctx, ref, false); err != nil {
		t.Fatalf("RemoveImage: %v", err)
	}
	if ok, _ := cl.ImageExists(ctx, ref); ok {
		t.Errorf("image still there after RemoveImage")
	}
	// What was pushed can be pulled back: same image.
	back, err := cl.Pull(ctx, copyRef, false)
	if err != nil || back.ID != img.ID {
		t.Errorf("Pull of the pushed copy = %+v, %v; want ID %s", back, err, img.ID)
	}
}

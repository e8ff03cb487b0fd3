package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"kiln.dev/kiln/api"
)

// TestSystemDfAndPrune: df counts what the root holds and what is in
// use; prune asks first (and does nothing on "n"), then removes stopped
// VMs, unused volumes and, with -a, images no VM uses.
func TestSystemDfAndPrune(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.loadImage("kiln-test/box:sys", dockerTestImage(t))
	ok(t, "create", e.kiln("create", "--kernel", e.kernel, "--pull", "never", "--name", "idle", "-v", "data:/data", "kiln-test/box:sys", "true"))
	ok(t, "volume create", e.kiln("volume", "create", "-l", "keep=no", "lone"))
	if got := strings.TrimSpace(ok(t, "volume inspect", e.kiln("volume", "inspect", "--format", "{{.Labels.keep}}", "lone")).stdout); got != "no" {
		t.Errorf("kiln volume inspect of a labelled volume: %q", got)
	}
	if r := e.kiln("volume", "ls", "--filter", "colour=red"); r.code != 125 || !strings.Contains(r.stderr, "colour=red") {
		t.Errorf("volume ls with a bad filter: want 125 naming it:\n%s", r)
	}

	df := ok(t, "system df", e.kiln("system", "df"))
	for _, want := range []string{`Images\s+1\s+1\s`, `VMs\s+1\s+0\s`, `Local Volumes\s+2\s+1\s`} {
		if !regexp.MustCompile(want).MatchString(df.stdout) {
			t.Errorf("system df: no %q:\n%s", want, df.stdout)
		}
	}
	var u api.DiskUsage
	if err := json.Unmarshal([]byte(ok(t, "system df json", e.kiln("system", "df", "--format", "json")).stdout), &u); err != nil {
		t.Fatal(err)
	}
	if len(u.VMs) != 1 || u.VMs[0].SizeBytes <= 0 || len(u.Images) != 1 || u.Images[0].Size <= 0 {
		t.Errorf("system df --format json: %+v", u)
	}

	// Declined: nothing goes.
	r := e.kilnStdin("n\n", "system", "prune", "-a", "--volumes")
	if r.code != 0 || !strings.Contains(r.stdout, "Are you sure") || !strings.Contains(r.stdout, "Nothing removed") {
		t.Errorf("system prune, declined:\n%s", r)
	}
	if out := strings.TrimSpace(e.kiln("ps", "-a", "-q").stdout); out == "" {
		t.Error("a declined prune removed the VM")
	}
	r = ok(t, "system prune -f", e.kiln("system", "prune", "-f", "-a", "--volumes"))
	if !strings.Contains(r.stdout, "Deleted VMs:") || !strings.Contains(r.stdout, "Total reclaimed space:") {
		t.Errorf("system prune -f output:\n%s", r.stdout)
	}
	for _, args := range [][]string{{"ps", "-a", "-q"}, {"volume", "ls", "-q"}, {"images", "-q"}} {
		if out := strings.TrimSpace(e.kiln(args...).stdout); out != "" {
			t.Errorf("after system prune -f -a --volumes, kiln %v lists %q", args, out)
		}
	}
	if r := e.kiln("system", "df", "--format", "yaml"); r.code != 125 || !strings.Contains(r.stderr, `invalid --format "yaml"`) {
		t.Errorf("system df --format yaml: want 125 naming it:\n%s", r)
	}
}

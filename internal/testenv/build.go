package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Binary is a program a test builds: Out its file name, Pkg its package;
// Static ones (what runs in a guest) are built without cgo and never with
// the race detector.
type Binary struct {
	Out, Pkg string
	Static   bool
}

// Build builds bins into dir with the go command; with race, the host-side
// ones are race-built, so that a test fails on their race reports too.
func Build(dir string, race bool, bins ...Binary) error {
	for _, b := range bins {
		args := []string{"build", "-o", filepath.Join(dir, b.Out)}
		if race && !b.Static {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, b.Pkg)...)
		cmd.Env = os.Environ()
		if b.Static {
			cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building %s: %v\n%s", b.Pkg, err, out)
		}
	}
	return nil
}

package vm

import (
	"fmt"
	"os"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
)

// checkMountSources checks that the host directories of bind and bake
// mounts exist and are directories.
func checkMountSources(ms []options.Mount) error {
	for _, m := range ms {
		if m.Type != options.MountBind && m.Type != options.MountBake {
			continue
		}
		st, err := os.Stat(m.Source)
		switch {
		case os.IsNotExist(err):
			return errdefs.Invalid(fmt.Sprintf("host directory %s (%s) does not exist: create it first", m.Source, options.FormatMount(m)))
		case err != nil:
			return errdefs.Invalid(fmt.Sprintf("host directory %s (%s): %v", m.Source, options.FormatMount(m), err))
		case !st.IsDir():
			return errdefs.Invalid(fmt.Sprintf("host path %s (%s) is not a directory: only directories can be mounted", m.Source, options.FormatMount(m)))
		}
	}
	return nil
}

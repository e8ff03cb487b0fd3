// Package unixsock works around the 108-byte limit on unix socket paths:
// state directories under a long kiln root still get their sockets.
package unixsock

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// MaxPath is the longest path a sockaddr_un holds (108 bytes with the NUL).
const MaxPath = 107

// WithPath calls fn with a path that names the socket path and fits in a
// sockaddr_un: path itself when short enough, else /proc/self/fd/N/<base>
// through a descriptor of its directory, held open while fn runs.
func WithPath(path string, fn func(p string) error) error {
	if len(path) <= MaxPath {
		return fn(path)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("opening socket directory: %w", err)
	}
	defer dir.Close()
	short := "/proc/self/fd/" + strconv.Itoa(int(dir.Fd())) + "/" + filepath.Base(path)
	if len(short) > MaxPath {
		return fmt.Errorf("socket name %q is too long", filepath.Base(path))
	}
	return fn(short)
}

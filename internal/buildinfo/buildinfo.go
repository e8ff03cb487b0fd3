// Package buildinfo says which build of kiln is running: the Go build ID
// of its own executable (which changes with every change to what was
// built, a dirty tree's included), and what the Go toolchain recorded of
// the source (commit, time, whether the tree was modified). The CLI and
// the daemon compare build IDs to warn when they differ.
package buildinfo

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
)

// Info is one build.
type Info struct {
	// BuildID is a short hash of the executable's Go build ID: equal for
	// the same build, different for any other; "" when it cannot be read.
	BuildID string `json:"buildID,omitempty"`
	// Commit is the source's VCS revision (12 characters), with
	// "-modified" when the tree had changes; "" when not recorded.
	Commit    string `json:"commit,omitempty"`
	BuiltAt   string `json:"builtAt,omitempty"`
	GoVersion string `json:"goVersion"`
	OSArch    string `json:"osArch"`
}

var (
	once sync.Once
	self Info
)

// Self returns the running executable's build.
func Self() Info {
	once.Do(func() {
		self = Info{GoVersion: runtime.Version(), OSArch: runtime.GOOS + "/" + runtime.GOARCH}
		if exe, err := os.Executable(); err == nil {
			self.BuildID = OfFile(exe)
		}
		bi, ok := debug.ReadBuildInfo()
		if !ok {
			return
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				self.Commit = s.Value
				if len(self.Commit) > 12 {
					self.Commit = self.Commit[:12]
				}
			case "vcs.time":
				self.BuiltAt = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && self.Commit != "" {
			self.Commit += "-modified"
		}
	})
	return self
}

// OfFile returns the short build ID of the Go executable at path, or ""
// when it has none that can be read.
func OfFile(path string) string {
	f, err := elf.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := f.Section(".note.go.buildid")
	if s == nil {
		return ""
	}
	b, err := s.Data()
	if err != nil || len(b) == 0 {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// Version is what a build calls itself: its commit, or "devel" when none
// was recorded.
func (i Info) Version() string { return VersionOf(i.Commit) }

// VersionOf is the version of a build with this commit (as a daemon
// reports it): the commit, or "devel" when none was recorded.
func VersionOf(commit string) string {
	if c := strings.TrimSpace(commit); c != "" {
		return c
	}
	return "devel"
}

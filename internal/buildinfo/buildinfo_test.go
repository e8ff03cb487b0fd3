package buildinfo

import (
	"debug/elf"
	"os"
	"path/filepath"
	"testing"
)

func TestSelfHasABuildIDThatChangesWithTheExecutable(t *testing.T) {
	s := Self()
	if len(s.BuildID) != 12 || s.GoVersion == "" || s.OSArch != "linux/amd64" {
		t.Fatalf("Self() = %+v: want a 12-character build ID, the Go version and linux/amd64", s)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if got := OfFile(exe); got != s.BuildID {
		t.Errorf("OfFile(own executable) = %q, Self().BuildID = %q", got, s.BuildID)
	}
	// Another build: the same executable with its Go build ID changed.
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	sec := f.Section(".note.go.buildid")
	f.Close()
	if sec == nil || sec.Size < 32 {
		t.Fatal("no Go build ID note in the test executable")
	}
	b[sec.Offset+sec.Size-1] ^= 1 // the ID's last byte
	other := filepath.Join(t.TempDir(), "other")
	if err := os.WriteFile(other, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := OfFile(other); got == "" || got == s.BuildID {
		t.Errorf("a changed build ID reads %q, the original %q: want a different one", got, s.BuildID)
	}
	if got := OfFile(filepath.Join(t.TempDir(), "missing")); got != "" {
		t.Errorf("OfFile(missing) = %q", got)
	}
}

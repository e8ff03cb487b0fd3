package vmm

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Share is a host directory shown to the guest as a 9p filesystem
// (virtio-9p on QEMU), found in the guest by Tag.
type Share struct {
	// ID names the share on the monitor's command line; as a drive ID.
	ID string
	// Path is the host directory, absolute.
	Path string
	// Tag is the mount tag the guest mounts it by (at most 31 bytes).
	Tag string
	// ReadOnly refuses every write from the guest in the monitor itself.
	ReadOnly bool
}

// MaxTag is the longest 9p mount tag kiln uses.
const MaxTag = 31

func (s *Share) validate() error {
	switch {
	case !driveIDRE.MatchString(s.ID):
		return fmt.Errorf("vm config: share ID %q: want a letter, then up to 31 letters, digits, '-', '_' or '.'", s.ID)
	case !filepath.IsAbs(s.Path):
		return fmt.Errorf("vm config: share %q: path %q is not absolute", s.ID, s.Path)
	case s.Tag == "" || len(s.Tag) > MaxTag || strings.ContainsAny(s.Tag, ", =\x00"):
		return fmt.Errorf("vm config: share %q: tag %q: want 1-%d bytes without spaces, commas or '='", s.ID, s.Tag, MaxTag)
	}
	return nil
}

// validateShares checks the shares and that their IDs are unique among
// themselves and the drives'.
func (c *Config) validateShares(ids map[string]bool) error {
	for _, s := range c.Shares {
		if err := s.validate(); err != nil {
			return err
		}
		if ids[s.ID] {
			return fmt.Errorf("vm config: ID %q used twice", s.ID)
		}
		ids[s.ID] = true
	}
	return nil
}

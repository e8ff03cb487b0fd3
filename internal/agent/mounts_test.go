package agent

import (
	"strings"
	"testing"
)

func TestSpecMountsValidate(t *testing.T) {
	tests := []struct {
		name   string
		m      Mount
		errHas string
	}{
		{"volume", Mount{Kind: MountDisk, Target: "/data", Serial: "kiln-vol0", FSType: "ext4", SubDir: "data"}, ""},
		{"bake", Mount{Kind: MountDisk, Target: "/etc/app", Serial: "kiln-bake1", FSType: "squashfs", ReadOnly: true}, ""},
		{"9p", Mount{Kind: Mount9P, Target: "/srv", Tag: "kiln-fs2"}, ""},
		{"relative target", Mount{Kind: Mount9P, Target: "srv", Tag: "t"}, "target"},
		{"unclean target", Mount{Kind: Mount9P, Target: "/srv/../etc", Tag: "t"}, "target"},
		{"root target", Mount{Kind: Mount9P, Target: "/", Tag: "t"}, "target"},
		{"disk without serial", Mount{Kind: MountDisk, Target: "/d", FSType: "ext4"}, "serial"},
		{"subdir escaping", Mount{Kind: MountDisk, Target: "/d", Serial: "s", FSType: "ext4", SubDir: "../x"}, "subdirectory"},
		{"absolute subdir", Mount{Kind: MountDisk, Target: "/d", Serial: "s", FSType: "ext4", SubDir: "/x"}, "subdirectory"},
		{"9p without tag", Mount{Kind: Mount9P, Target: "/d"}, "tag"},
		{"unknown kind", Mount{Kind: "nfs", Target: "/d"}, "unknown kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Spec{Version: Version, Args: []string{"/p"}, Mounts: []Mount{tt.m}}
			err := s.Validate()
			switch {
			case tt.errHas == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tt.errHas != "" && (err == nil || !strings.Contains(err.Error(), tt.errHas)):
				t.Errorf("Validate: %v, want an error containing %q", err, tt.errHas)
			}
		})
	}
}

// Package jail confines a VMM process the way Firecracker's jailer does,
// for any VMM: its own unprivileged uid and gid, no capabilities,
// no_new_privs, new mount, pid, ipc and uts namespaces, a root that holds
// only the files it was given, and the cgroups it was put in.
//
// The confinement is set up by a small helper that is kiln's own binary run
// as `kiln jail-exec SPEC`: it starts as root in the new namespaces, joins
// the cgroups, builds the root, drops every privilege and finally execs the
// VMM, so the VMM's PID is the helper's and nothing of kiln stays in the
// jail. Command builds that helper's command line; Exec is its body.
package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path"
	"strings"
	"syscall"
)

// ExecArg is the first argument that makes kiln's binary run Exec.
const ExecArg = "jail-exec"

// Spec describes one jailed process.
type Spec struct {
	// Hostname is the jail's host name (its own uts namespace).
	Hostname string `json:"hostname"`
	// Root is an empty host directory the jail's root is mounted on (a
	// small tmpfs, in the jail's own mount namespace: nothing shows on the
	// host).
	Root string `json:"root"`
	// UID and GID are what the process runs as: never 0.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// Binds are the host files and directories visible in the jail; nothing
	// else of the host's filesystem is.
	Binds []Bind `json:"binds"`
	// Proc mounts a procfs of the jail's own pid namespace at /proc,
	// showing processes only (QEMU's 9p server reaches files through
	// /proc/self/fd).
	Proc bool `json:"proc,omitempty"`
	// Cgroups are the cgroup directories the process joins before it drops
	// its privileges (one per v1 controller, or one on cgroup v2).
	Cgroups []string `json:"cgroups,omitempty"`
	// Argv is the program, as a path inside the jail, and its arguments.
	Argv []string `json:"argv"`
	// Env is the program's whole environment.
	Env []string `json:"env,omitempty"`
}

// Bind shows the host path Src at Dst inside the jail.
type Bind struct {
	Src string `json:"src"`
	// Dst is an absolute path inside the jail.
	Dst string `json:"dst"`
	// Writable leaves the bind writable; by default it is read-only.
	Writable bool `json:"writable,omitempty"`
	// Device keeps device nodes usable (for /dev/null, /dev/kvm); every
	// other bind is nodev. Every bind is nosuid.
	Device bool `json:"device,omitempty"`
	// MountFD, when not 0, is the helper's descriptor of a detached mount
	// of Src made beforehand (an id-mapped directory, IDMapped): it is
	// moved to Dst as it is, with the flags it was made with.
	MountFD int `json:"mountFD,omitempty"`
}

// Validate reports whether s can be set up.
func (s *Spec) Validate() error {
	switch {
	case s.UID <= 0 || s.GID <= 0:
		return fmt.Errorf("jail: uid %d gid %d: a jailed process never runs as root (0) or with an unset id", s.UID, s.GID)
	case !path.IsAbs(s.Root):
		return fmt.Errorf("jail: root %q: want an absolute path", s.Root)
	case len(s.Argv) == 0 || !path.IsAbs(s.Argv[0]):
		return fmt.Errorf("jail: program %q: want an absolute path inside the jail", strings.Join(s.Argv, " "))
	}
	seen := map[string]bool{}
	for _, b := range s.Binds {
		d := path.Clean(b.Dst)
		switch {
		case !path.IsAbs(b.Src) || !path.IsAbs(b.Dst):
			return fmt.Errorf("jail: bind %q -> %q: want absolute paths", b.Src, b.Dst)
		case d == "/" || d != b.Dst:
			return fmt.Errorf("jail: bind target %q: want a clean path below /", b.Dst)
		case seen[d]:
			return fmt.Errorf("jail: bind target %q given twice", b.Dst)
		}
		seen[d] = true
	}
	return nil
}

// Command returns the command that runs s's program jailed, through helper
// (kiln's own binary). The caller adds Stdout, Stderr and ExtraFiles (the
// descriptors the program inherits, from 3 on) and starts it; it starts in
// its own session and namespaces, so it outlives its parent.
func Command(helper string, s Spec) (*exec.Cmd, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encoding jail spec: %w", err)
	}
	cmd := exec.Command(helper, ExecArg, string(b))
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
	}
	return cmd, nil
}

// Exec is the helper's body: args are what follows ExecArg. It sets up the
// jail and execs the program, so it returns only on error; the caller
// prints the error (to the VMM's log) and exits non-zero.
//
// Preconditions: the process runs as root in the new namespaces Command
// asked for.
func Exec(args []string) error {
	if len(args) != 1 {
		return errors.New("jail-exec: want one argument, the jail spec")
	}
	var s Spec
	if err := json.Unmarshal([]byte(args[0]), &s); err != nil {
		return fmt.Errorf("jail-exec: parsing spec: %w", err)
	}
	if err := s.Validate(); err != nil {
		return err
	}
	return setup(&s)
}

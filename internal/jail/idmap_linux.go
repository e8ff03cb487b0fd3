package jail

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// UsernsArg is the first argument that makes kiln's binary run Userns: a
// process that only holds a user namespace open until its stdin closes.
const UsernsArg = "jail-userns"

// Userns is the body of the user namespace holder: it waits for its stdin
// to close.
func Userns() {
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// IDMapped returns a detached mount of the host directory dir in which the
// files owned by dir's owner (uid and gid) show as owned by uid and gid:
// what a process running as uid creates there is owned on disk by the
// directory's owner, and that process is the owner of what the owner owns.
// Files of other owners show as the overflow id (nobody), reachable by
// their permissions for others. The mount is nosuid and nodev, read-only
// unless writable. The caller hands it to the jail (Bind.MountFD) and
// closes it.
//
// helper is kiln's own binary: a child of it holds the user namespace that
// carries the mapping while the mount is made.
func IDMapped(helper, dir string, uid, gid int, writable bool) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, fmt.Errorf("host directory %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("host directory %s is not a directory", dir)
	}
	userns, err := mappedUserns(helper, int(st.Uid), int(st.Gid), uid, gid)
	if err != nil {
		return nil, err
	}
	defer userns.Close()
	fd, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("cloning the mount of host directory %s: %w", dir, err)
	}
	attr := &unix.MountAttr{
		Attr_set:  unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV,
		Userns_fd: uint64(userns.Fd()),
	}
	if !writable {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, attr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EINVAL) {
			var fs unix.Statfs_t
			_ = unix.Statfs(dir, &fs)
			return nil, fmt.Errorf("host directory %s is on a file system (magic %#x) that cannot be id-mapped, which a jailed VM needs to share it: use a directory on ext4, xfs, btrfs or tmpfs, or run the VM with --unconfined: %w", dir, fs.Type, err)
		}
		return nil, fmt.Errorf("id-mapping host directory %s: %w", dir, err)
	}
	return os.NewFile(uintptr(fd), "idmapped:"+dir), nil
}

// mappedUserns returns a user namespace mapping hostUID/hostGID (inside)
// to uid/gid (outside), held by a child of helper while it is open.
func mappedUserns(helper string, hostUID, hostGID, uid, gid int) (*os.File, error) {
	cmd := exec.Command(helper, UsernsArg)
	cmd.Env = []string{}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("making a user namespace: %w", err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: hostUID, HostID: uid, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: hostGID, HostID: gid, Size: 1}},
	}
	if err := cmd.Start(); err != nil {
		stdin.Close()
		return nil, fmt.Errorf("making a user namespace: %w", err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	f, err := os.Open("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/user")
	if err != nil {
		return nil, fmt.Errorf("opening the user namespace: %w", err)
	}
	return f, nil
}

// moveMount attaches the detached mount fd at dst.
func moveMount(fd int, dst string) error {
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("jail: attaching an id-mapped directory at %s: %w", dst, err)
	}
	return unix.Close(fd)
}

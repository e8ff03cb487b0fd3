// Command containerd-shim-kiln-v2 is kiln's containerd runtime v2 shim
// (runtime io.containerd.kiln.v2): each containerd task is a kiln VM,
// created, started, signalled, waited for and removed through the kiln
// daemon of $KILN_ROOT (default /var/lib/kiln), which is started on demand
// as the kiln CLI starts it.
//
// What a task is, from its bundle's OCI spec: the root filesystem (the
// task's rootfs mounts, mounted at <bundle>/rootfs, or the spec's
// root.path) becomes the VM's root (api.VMConfig.RootDir); process.args,
// env, cwd, user and rlimits are the VM's program; the spec's memory limit
// and CPU quota size the VM. The VM has no network ("none"), unless the
// spec names a network namespace (a pod's): the VM then takes over its
// interface (network "ns:PATH"). The kernel is the annotation
// dev.kiln.kernel, else $KILN_KERNEL, else the daemon's default.
//
// Limits, as kiln's API has them: the task's main program gets no stdin
// and no tty (process.terminal is refused); its stdout and stderr reach
// containerd as the VM's logs do, line by line. Execs get stdin, a tty and
// resizes. Pause and resume are kiln's; checkpoint and update are not
// implemented.
package main

import (
	"github.com/containerd/containerd/runtime/v2/shim"
)

// runtimeName is the runtime containerd knows this shim by.
const runtimeName = "io.containerd.kiln.v2"

func main() {
	// The shim starts no process of its own to reap: kiln's daemon owns
	// the VMs. Without a subreaper a daemon the shim starts on demand is
	// not left as its child either.
	shim.Run(runtimeName, newService, func(c *shim.Config) {
		c.NoSubreaper = true
		c.NoReaper = true
	})
}

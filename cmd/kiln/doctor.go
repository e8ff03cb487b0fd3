package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/internal/cgroup"
	"kiln.dev/kiln/internal/daemon"
	"kiln.dev/kiln/internal/jail"
	"kiln.dev/kiln/internal/kernel"
	"kiln.dev/kiln/internal/vmm"
	"kiln.dev/kiln/internal/vmm/qemu"
)

// check is one line of `kiln doctor`.
type check struct {
	name string
	ok   bool
	info string // what was found, or what is wrong
	fix  string // how to fix it, when not ok
}

func newDoctorCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check what kiln needs on this host, and say how to fix what is missing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks := doctorChecks(g.root, vmm.RealHost)
			if printChecks(cmd.OutOrStdout(), checks) {
				return nil
			}
			return &exitCode{1}
		},
	}
}

func doctorChecks(root string, h vmm.Host) []check {
	var cs []check
	if bin, err := qemu.FindBinary(""); err != nil {
		cs = append(cs, check{"qemu", false, err.Error(), "apt-get install qemu-system-x86 (or run scripts/setup)"})
	} else {
		cs = append(cs, check{"qemu", true, bin, ""})
	}
	if p, err := daemon.FindInit(); err != nil {
		cs = append(cs, check{"kiln-init", false, err.Error(), "make build (or run scripts/setup)"})
	} else {
		cs = append(cs, check{"kiln-init", true, p, ""})
	}
	if k, err := kernel.NewStore(root).Get(kernel.DefaultName); err != nil {
		cs = append(cs, check{"kernel", false, err.Error(), "kiln kernel build (or run scripts/setup)"})
	} else {
		cs = append(cs, check{"kernel", true, fmt.Sprintf("%s: %s", k.Path, k.Origin), ""})
	}
	cs = append(cs, confinementChecks()...)
	choice, err := h.ChooseAccel(vmm.AccelAuto)
	switch {
	case err != nil:
		cs = append(cs, check{"accelerator", false, err.Error(), ""})
	case choice.Accel == vmm.AccelKVM:
		cs = append(cs, check{"accelerator", true, "kvm: " + choice.Reason, ""})
	default:
		// TCG works; it is slower, and doctor says why KVM is not used.
		cs = append(cs, check{"accelerator", true, "tcg: " + choice.Reason,
			""})
	}
	return cs
}

// printChecks prints one line per check and reports whether all passed.
func printChecks(w io.Writer, cs []check) bool {
	all := true
	for _, c := range cs {
		status := "OK  "
		if !c.ok {
			status, all = "FAIL", false
		}
		fmt.Fprintf(w, "%s %-12s %s\n", status, c.name, c.info)
		if !c.ok && c.fix != "" {
			fmt.Fprintf(w, "     %-12s fix: %s\n", "", c.fix)
		}
	}
	return all
}

// confinementChecks check each piece of the jail a root daemon puts every
// VM's QEMU in: a free uid range, cgroups with memory, cpu and pids, and
// QEMU's seccomp sandbox.
func confinementChecks() []check {
	if os.Geteuid() != 0 {
		return []check{{"jail", true, fmt.Sprintf("not root: VMs' QEMUs run as uid %d with QEMU's seccomp sandbox only, in the host's namespaces, without cgroup limits", os.Geteuid()), ""}}
	}
	var cs []check
	uids, err := daemon.JailUIDs()
	if err == nil {
		err = jail.CheckHostRange(uids)
	}
	if err != nil {
		cs = append(cs, check{"jail uids", false, err.Error(), "start the daemon with --jail-uids MIN-MAX (or $" + jail.UIDsEnv + ") naming ids no host user or group has"})
	} else {
		cs = append(cs, check{"jail uids", true, uids.String() + ", used by no host user or group", ""})
	}
	if h, err := cgroup.Detect(); err != nil {
		cs = append(cs, check{"cgroups", false, err.Error(), "mount the memory, cpu and pids controllers (cgroup v1), or enable them in cgroup v2's subtree_control"})
	} else {
		cs = append(cs, check{"cgroups", true, fmt.Sprintf("v%d with memory, cpu and pids", h.Version), ""})
	}
	if bin, err := qemu.FindBinary(""); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "-sandbox", qemu.Sandbox, "-M", "none", "-nodefaults", "-display", "none", "-S", "-qmp", "stdio")
		cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}{"execute":"quit"}`)
		out, err := cmd.CombinedOutput()
		if err != nil && !strings.Contains(string(out), "QMP") {
			cs = append(cs, check{"seccomp", false, "QEMU refuses -sandbox: " + strings.TrimSpace(string(out)), "install a QEMU built with seccomp (Debian's qemu-system-x86 is)"})
		} else {
			cs = append(cs, check{"seccomp", true, "QEMU's -sandbox " + qemu.Sandbox, ""})
		}
	}
	return cs
}

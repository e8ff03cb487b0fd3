package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/internal/kernel"
	"kiln.dev/kiln/internal/runtime"
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
	if p, err := runtime.FindInit(); err != nil {
		cs = append(cs, check{"kiln-init", false, err.Error(), "make build (or run scripts/setup)"})
	} else {
		cs = append(cs, check{"kiln-init", true, p, ""})
	}
	if k, err := kernel.NewStore(root).Get(kernel.DefaultName); err != nil {
		cs = append(cs, check{"kernel", false, err.Error(), "kiln kernel build (or run scripts/setup)"})
	} else {
		cs = append(cs, check{"kernel", true, fmt.Sprintf("%s: %s", k.Path, k.Origin), ""})
	}
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

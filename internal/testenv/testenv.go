// Package testenv holds what tests of every kiln package share about the
// machine they run on: the gate of the tests that boot VMs.
//
// Tests come in two tiers. The unit tier (`go test ./...`) needs neither
// QEMU nor a guest kernel and boots no VM, so it is quick on any machine.
// The VM tier boots real VMs under QEMU (under TCG here, a second or two of
// CPU per boot) and runs only when $KILN_VM_TESTS is set to a true value,
// as `make test` does.
package testenv

import (
	"os"
	"strconv"
	"testing"
)

// VMTestsEnv names the variable that turns the VM tier on.
const VMTestsEnv = "KILN_VM_TESTS"

// VMTests reports whether the VM tier is on: $KILN_VM_TESTS holds a true
// value (1, t, true, ...).
func VMTests() bool {
	on, err := strconv.ParseBool(os.Getenv(VMTestsEnv))
	return err == nil && on
}

// NeedVM skips t unless the VM tier is on, saying how to run it. Call it
// first in every test that boots a VM or needs QEMU or a guest kernel;
// what else such a test needs (root, a network namespace, the kernel
// itself) it checks after, with its own skip and fix.
func NeedVM(t testing.TB) {
	t.Helper()
	if !VMTests() {
		t.Skip("VM tier (boots VMs, or needs QEMU and a guest kernel): run it with " + VMTestsEnv + "=1 go test ... (make test sets it)")
	}
}

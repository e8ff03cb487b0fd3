package cgroup

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"kiln.dev/kiln/internal/errdefs"
)

// mib is a mebibyte.
const mib = 1 << 20

// Admit reports whether a VM needing want bytes fits when running VMs
// already hold used bytes, on a host of total bytes of which share
// (0 < share <= 1) may go to VMs: the rest is for the host and kiln itself,
// so that starting one VM too many fails with a message rather than with the
// host's OOM killer picking a victim. The error, marked
// errdefs.ErrUnavailable, names every figure in MiB and the fix. In it,
// what kiln may use is rounded down and what VMs would hold is rounded up,
// so that the figures never look as if the VM fit.
func Admit(want, used, total int64, share float64) error {
	switch {
	case want <= 0:
		return fmt.Errorf("admitting a VM: memory %d bytes is not positive: %w", want, errdefs.ErrInvalidArgument)
	case used < 0:
		return fmt.Errorf("admitting a VM: memory held by running VMs %d bytes is negative: %w", used, errdefs.ErrInvalidArgument)
	case total <= 0:
		return fmt.Errorf("admitting a VM: host memory %d bytes is not positive: %w", total, errdefs.ErrInvalidArgument)
	case !(share > 0 && share <= 1):
		return fmt.Errorf("admitting a VM: memory share %g is not in (0, 1]: %w", share, errdefs.ErrInvalidArgument)
	}
	allowed := int64(float64(total) * share)
	if share == 1 {
		allowed = total // exactly, whatever float64 makes of total
	}
	// want > allowed-used rather than want+used > allowed, which could
	// overflow.
	if want <= allowed-used {
		return nil
	}
	fixes := []string{"lower --memory"}
	if used > 0 {
		fixes = slices.Insert(fixes, 0, "stop a VM")
	}
	if share < 1 {
		fixes = append(fixes, "raise the daemon's --memory-share")
	}
	fix := strings.Join(fixes[:len(fixes)-1], ", ")
	if fix != "" {
		fix += ", or "
	}
	fix += fixes[len(fixes)-1]
	held := ceilMiB(used)
	sum := held + ceilMiB(want)
	if want <= math.MaxInt64-used {
		sum = ceilMiB(want + used)
	}
	return errdefs.Mark(fmt.Errorf("a VM needing %d MiB: VMs would hold %d MiB of the %d MiB kiln may use (%s%% of %d MiB; %d MiB held by running VMs): %s",
		ceilMiB(want), sum, allowed/mib, percent(share), total/mib, held, fix), errdefs.ErrUnavailable)
}

// ceilMiB is n bytes in MiB, rounded up.
func ceilMiB(n int64) int64 {
	m := n / mib
	if n%mib != 0 {
		m++
	}
	return m
}

// percent is share as a percentage to one decimal, without a trailing ".0".
func percent(share float64) string {
	return strconv.FormatFloat(math.Round(share*1000)/10, 'f', -1, 64)
}

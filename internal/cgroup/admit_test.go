package cgroup

import (
	"errors"
	"math"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

func TestAdmit(t *testing.T) {
	const m = 1 << 20
	tests := []struct {
		name              string
		want, used, total int64
		share             float64
		wantErr           string // the whole message; "" when the VM fits
		wantKind          error
	}{
		{name: "fits on an idle host", want: 4096 * m, used: 0, total: 24111 * m, share: 0.9},
		{name: "fits beside running VMs", want: 256 * m, used: 18904 * m, total: 24111 * m, share: 0.9},
		{name: "fills the share exactly", want: 100 * m, used: 800 * m, total: 1000 * m, share: 0.9},
		{name: "whole host", want: 1000 * m, used: 0, total: 1000 * m, share: 1},
		{
			name: "beyond the share with VMs running", want: 4096 * m, used: 18904 * m, total: 24111 * m, share: 0.9,
			wantErr: "a VM needing 4096 MiB: VMs would hold 23000 MiB of the 21699 MiB kiln may use (90% of 24111 MiB; 18904 MiB held by running VMs): " +
				"stop a VM, lower --memory, or raise the daemon's --memory-share",
			wantKind: errdefs.ErrUnavailable,
		},
		{
			name: "one byte over", want: 100*m + 1, used: 800 * m, total: 1000 * m, share: 0.9,
			wantErr: "a VM needing 101 MiB: VMs would hold 901 MiB of the 900 MiB kiln may use (90% of 1000 MiB; 800 MiB held by running VMs): " +
				"stop a VM, lower --memory, or raise the daemon's --memory-share",
			wantKind: errdefs.ErrUnavailable,
		},
		{
			name: "alone too big", want: 30000 * m, used: 0, total: 24111 * m, share: 0.75,
			wantErr:  "a VM needing 30000 MiB: VMs would hold 30000 MiB of the 18083 MiB kiln may use (75% of 24111 MiB; 0 MiB held by running VMs): lower --memory, or raise the daemon's --memory-share",
			wantKind: errdefs.ErrUnavailable,
		},
		{
			name: "alone too big for the whole host", want: 2000 * m, used: 0, total: 1000 * m, share: 1,
			wantErr:  "a VM needing 2000 MiB: VMs would hold 2000 MiB of the 1000 MiB kiln may use (100% of 1000 MiB; 0 MiB held by running VMs): lower --memory",
			wantKind: errdefs.ErrUnavailable,
		},
		{
			name: "odd share", want: 512 * m, used: 100 * m, total: 1000 * m, share: 1.0 / 3,
			wantErr:  "a VM needing 512 MiB: VMs would hold 612 MiB of the 333 MiB kiln may use (33.3% of 1000 MiB; 100 MiB held by running VMs): stop a VM, lower --memory, or raise the daemon's --memory-share",
			wantKind: errdefs.ErrUnavailable,
		},
		{
			name: "no overflow", want: math.MaxInt64, used: math.MaxInt64, total: 1000 * m, share: 1,
			wantErr:  "a VM needing 8796093022208 MiB: VMs would hold 17592186044416 MiB of the 1000 MiB kiln may use (100% of 1000 MiB; 8796093022208 MiB held by running VMs): stop a VM, or lower --memory",
			wantKind: errdefs.ErrUnavailable,
		},
		{name: "zero want", want: 0, used: 0, total: 1000 * m, share: 0.9, wantErr: "admitting a VM: memory 0 bytes is not positive: invalid argument", wantKind: errdefs.ErrInvalidArgument},
		{name: "negative used", want: m, used: -1, total: 1000 * m, share: 0.9, wantErr: "admitting a VM: memory held by running VMs -1 bytes is negative: invalid argument", wantKind: errdefs.ErrInvalidArgument},
		{name: "zero total", want: m, used: 0, total: 0, share: 0.9, wantErr: "admitting a VM: host memory 0 bytes is not positive: invalid argument", wantKind: errdefs.ErrInvalidArgument},
		{name: "zero share", want: m, used: 0, total: 1000 * m, share: 0, wantErr: "admitting a VM: memory share 0 is not in (0, 1]: invalid argument", wantKind: errdefs.ErrInvalidArgument},
		{name: "share above 1", want: m, used: 0, total: 1000 * m, share: 1.5, wantErr: "admitting a VM: memory share 1.5 is not in (0, 1]: invalid argument", wantKind: errdefs.ErrInvalidArgument},
		{name: "NaN share", want: m, used: 0, total: 1000 * m, share: math.NaN(), wantErr: "admitting a VM: memory share NaN is not in (0, 1]: invalid argument", wantKind: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Admit(tt.want, tt.used, tt.total, tt.share)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("Admit: %v", err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("Admit = %v\nwant %s", err, tt.wantErr)
			}
			if !errors.Is(err, tt.wantKind) {
				t.Errorf("Admit error %v is not %v", err, tt.wantKind)
			}
		})
	}
}

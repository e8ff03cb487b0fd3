package options

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/testenv"
)

func TestParseMemory(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr string
	}{
		{in: "256m", want: 256},
		{in: "256M", want: 256},
		{in: "256mb", want: 256},
		{in: "1g", want: 1024},
		{in: "1G", want: 1024},
		{in: "1GB", want: 1024},
		{in: "512MiB", want: 512},
		{in: "2gib", want: 2048},
		{in: "1t", want: 1 << 20},
		{in: "1.5g", want: 1536},
		{in: "0.5g", want: 512},
		{in: " 64m ", want: 64},
		{in: "1048576k", want: 1024},
		{in: "1k", wantErr: "below 1m"},
		{in: "100k", wantErr: "below 1m"},
		{in: "1024", wantErr: "below 1m"}, // bytes by default
		{in: "268435456", want: 256},
		{in: "268435456b", want: 256},
		{in: "0", want: 0},
		{in: "0m", want: 0},
		{in: "99999999t", want: math.MaxInt32}, // clamped; Validate rejects it against the host
		{in: "", wantErr: `""`},
		{in: "abc", wantErr: `"abc"`},
		{in: "-1m", wantErr: `"-1m"`},
		{in: "m", wantErr: `"m"`},
		{in: "g1", wantErr: `"g1"`},
		{in: "1x", wantErr: `"1x"`},
		{in: "1 g", wantErr: `"1 g"`},
		{in: "infm", wantErr: `"infm"`},
		{in: "NaN", wantErr: `"NaN"`},
		{in: "1e400", wantErr: `"1e400"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseMemory(tt.in)
			if tt.wantErr != "" {
				testenv.CheckInvalid(t, err, tt.wantErr)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseMemory(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatMiB(t *testing.T) {
	for mib, want := range map[int]string{0: "0m", 1: "1m", 256: "256m", 1024: "1g", 1536: "1536m", 4096: "4g", 1 << 20: "1024g"} {
		if got := FormatMiB(mib); got != want {
			t.Errorf("FormatMiB(%d) = %q, want %q", mib, got, want)
		}
		if mib > 0 {
			if back, err := ParseMemory(want); err != nil || back != mib {
				t.Errorf("ParseMemory(FormatMiB(%d)) = %d, %v", mib, back, err)
			}
		}
	}
}

func FuzzParseMemory(f *testing.F) {
	for _, s := range []string{"256m", "1g", "1.5G", "512MiB", "1t", "0", "100k", "-1m", "", "abc", "1e3m", "0x1p20", "9e99t", "1b", "kib"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseMemory(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseMemory(%q) error %v is not ErrInvalidArgument", s, err)
			}
			return
		}
		if v < 0 || v > math.MaxInt32 {
			t.Fatalf("ParseMemory(%q) = %d, out of range", s, v)
		}
		if v > 0 {
			f := FormatMiB(v)
			back, err := ParseMemory(f)
			if err != nil || back != v {
				t.Fatalf("ParseMemory(%q) = %d, but ParseMemory(FormatMiB(%d) = %q) = %d, %v", s, v, v, f, back, err)
			}
		}
	})
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "1024": 1024, "4096b": 4096, "1k": 1 << 10, "10m": 10 << 20, "10M": 10 << 20,
		"10mb": 10 << 20, "10MiB": 10 << 20, "2g": 2 << 30, "1t": 1 << 40, " 64k ": 64 << 10,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "m", "-1m", "1.5m", "abc", "1x", "1 g", "17179869185g", "9223372036854775k", "9223372036854775808"} {
		_, err := ParseSize(in)
		testenv.CheckInvalid(t, err, fmt.Sprintf("%q", in))
	}
}

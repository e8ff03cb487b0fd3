package main

import (
	"fmt"
	"os"
	"os/exec"
	"time"

	"kiln.dev/kiln/bench/internal/benchkit"
)

// runACPI times `kiln run --rm --cold` of a bare program with few volumes
// (its devices fit microvm's transports without ACPI) against the same
// with many (kiln boots it with ACPI, for the transports it adds), n
// rounds interleaved, and prints the medians and their ratio: what the
// mount cap's ACPI boot costs.
func runACPI(n int, kiln, prog, kernel string) error {
	if n < 5 {
		return fmt.Errorf("-n %d: use at least 5 runs", n)
	}
	root, err := os.MkdirTemp("", "kiln-bench-acpi-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	defer benchkit.StopDaemon(root)
	vols := func(k int) []string {
		var a []string
		for i := range k {
			a = append(a, "-v", fmt.Sprintf("v%d:/v%d", i, i))
		}
		return a
	}
	one := func(k int) (time.Duration, error) {
		args := append([]string{"--root", root, "run", "--rm", "--cold", "--kernel", kernel}, vols(k)...)
		start := time.Now()
		out, err := exec.Command(kiln, append(args, prog)...).CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("kiln run with %d volumes: %w\n%s", k, err, out)
		}
		return time.Since(start), nil
	}
	const few, many = 2, 6
	if _, err := one(many); err != nil { // starts the daemon, makes the volumes
		return err
	}
	var fewS, manyS []sample
	for i := 0; i < n; i++ {
		d, err := one(few)
		if err != nil {
			return err
		}
		fewS = append(fewS, sample{wall: d})
		if d, err = one(many); err != nil {
			return err
		}
		manyS = append(manyS, sample{wall: d})
	}
	f, m := median(fewS), median(manyS)
	fmt.Printf("kiln run --rm --cold to exit, median of %d:\n", n)
	fmt.Printf("  %d volumes (acpi=off):  %7.0f ms\n", few, ms(f.wall))
	fmt.Printf("  %d volumes (acpi=on):   %7.0f ms\n", many, ms(m.wall))
	fmt.Printf("  ratio acpi=on/acpi=off: %7.3f\n", float64(m.wall)/float64(f.wall))
	return nil
}

package main

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"

	"kiln.dev/kiln/bench/internal/benchkit"
)

// runParallel times `kiln run --rm` of a program that exits at once, alone
// and then p at once, n rounds of each (interleaved), and prints the
// median wall time of each and their ratio: on two cores p VMs at once can
// at best take p/2 times one, and TCG's boots share the host's CPUs. The
// VMs boot (--cold), or with template start restored from one template.
func runParallel(n, p int, kiln, prog, kernel string, template bool) error {
	if p < 2 {
		return fmt.Errorf("-parallel %d: use at least 2", p)
	}
	root, err := os.MkdirTemp("", "kiln-bench-parallel-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	defer benchkit.StopDaemon(root)
	args := []string{"--root", root, "run", "--rm", "--kernel", kernel}
	how := "restored from a template"
	if !template {
		args, how = append(args, "--cold"), "booted"
	}
	one := func() error {
		out, err := exec.Command(kiln, append(args, prog)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("kiln run: %w\n%s", err, out)
		}
		return nil
	}
	if err := one(); err != nil { // starts the daemon, warms the caches, makes the template
		return err
	}
	var single, many []sample
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := one(); err != nil {
			return err
		}
		single = append(single, sample{wall: time.Since(start)})
		start = time.Now()
		errs := make(chan error, p)
		var wg sync.WaitGroup
		for j := 0; j < p; j++ {
			wg.Add(1)
			go func() { defer wg.Done(); errs <- one() }()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				return err
			}
		}
		many = append(many, sample{wall: time.Since(start)})
	}
	s, m := median(single), median(many)
	fmt.Printf("kiln run --rm, %s, median of %d:\n", how, n)
	fmt.Printf("  one VM:             %7.0f ms\n", ms(s.wall))
	fmt.Printf("  %d VMs at once:      %7.0f ms\n", p, ms(m.wall))
	goal := float64(p) / 2
	if template && p == 8 {
		goal = 3 // the goal for 8 restored at once
	}
	fmt.Printf("  ratio %d at once/one: %6.2f  (goal <= %.1f on two cores)\n", p, float64(m.wall)/float64(s.wall), goal)
	return nil
}

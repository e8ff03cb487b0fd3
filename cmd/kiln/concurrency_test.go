package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Parallel runs, stops and removals on many VMs, rm -f of VMs that are
// still booting and stop of VMs that are exiting on their own: every
// command ends (no deadlock), nothing is left (no QEMU, directory or
// record), and a race-built daemon reports no data race (newEnv's cleanup
// reads its log). The goroutines report to errs and never end the test.
func TestConcurrentLifecycle(t *testing.T) {
	// Serial: it boots several VMs at once on purpose; other tests' boots on top would test the machine's load, not kiln.
	e := newEnv(t)
	e.kiln("ps") // one daemon for all
	const n = 6
	var wg sync.WaitGroup
	errs := make(chan string, 4*n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("vm%d", i)
			args := []string{"run", "-d", "--kernel", e.kernel, "--name", name, e.hello()}
			switch i % 3 {
			case 0: // long-running: stopped, then removed
				args = append(args, "-sleep", "10m")
			case 1: // removed with -f while it boots
			case 2: // exits on its own while being stopped
				args = append(args, "-exit", "3")
			}
			if r := e.kilnAsync(args...); r.code != 0 {
				errs <- fmt.Sprintf("%s: run: %s", name, r)
				return
			}
			switch i % 3 {
			case 0:
				if err := e.awaitLogErr(name, "sleeping", 1); err != nil {
					errs <- fmt.Sprintf("%s: %v", name, err)
					return
				}
				if r := e.kilnAsync("stop", name); r.code != 0 {
					errs <- fmt.Sprintf("%s: stop: %s", name, r)
				}
				if r := e.kilnAsync("rm", name); r.code != 0 {
					errs <- fmt.Sprintf("%s: rm: %s", name, r)
				}
			case 1:
				if r := e.kilnAsync("rm", "-f", name); r.code != 0 {
					errs <- fmt.Sprintf("%s: rm -f while booting: %s", name, r)
				}
			case 2:
				if r := e.kilnAsync("stop", name); r.code != 0 {
					errs <- fmt.Sprintf("%s: stop while exiting: %s", name, r)
				}
				if r := e.kilnAsync("rm", "-f", name); r.code != 0 {
					errs <- fmt.Sprintf("%s: rm: %s", name, r)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if r := e.kiln("ps", "-a", "-q"); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("VMs left after removal:\n%s", r)
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("VM directories left: %v", d)
	}
	if pids := qemuUnder(e.root); len(pids) != 0 {
		t.Errorf("QEMU processes left: %v", pids)
	}
}

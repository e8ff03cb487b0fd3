package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vm"
	"kiln.dev/kiln/internal/vmm/qemu"
)

// TestCollectorTakesABacklogInBoundedMemory plays a guest that wrote 48 MiB
// of stdout while no daemon ran: the collector that starts afterwards
// works through it without holding it in memory, and keeps every byte
// (the last line arrives, and the raw file's taken part is given back).
func TestCollectorTakesABacklogInBoundedMemory(t *testing.T) {
	dir := logDir(t)
	f, err := os.OpenFile(filepath.Join(dir, vm.StdoutFile), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	line := append(bytes.Repeat([]byte("y"), 1023), '\n')
	block := bytes.Repeat(line, 1024) // 1 MiB
	for range 48 {
		if _, err := f.Write(block); err != nil {
			t.Fatal(err)
		}
	}
	f.WriteString("the last line\n")
	f.Close()

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()
	c := startTest(t, dir, options.LogConfig{MaxSize: 1 << 20, MaxFiles: 2})
	close(stop)
	<-sampled
	if grew := int64(peak.Load()) - int64(base.HeapInuse); grew > 16<<20 {
		t.Errorf("taking a 48 MiB backlog grew the heap by %d MiB", grew>>20)
	}
	entries := readAll(t, c)
	if len(entries) == 0 || entries[len(entries)-1].Line != "the last line\n" {
		t.Fatalf("the last line of the backlog was not kept")
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, vm.StdoutFile), &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 2*punchEvery {
		t.Errorf("the raw stdout file still takes %d bytes once taken", used)
	}
}

// pipeDir makes a VM directory whose output comes through FIFOs, and opens
// stdout's write end as QEMU does (read-write, non-blocking).
func pipeDir(t *testing.T) (string, *os.File) {
	t.Helper()
	dir := t.TempDir()
	for _, p := range []string{vm.StdoutPipe, vm.StderrPipe} {
		if err := qemu.MakePipe(filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	w, err := os.OpenFile(pipeFIFO(dir, 0), os.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return dir, w
}

// TestCollectorPipesHoldAtMostTheirBufferAndLoseNothing plays a guest that
// writes all it can while no daemon runs: the FIFO takes no more than its
// buffer (the guest's next write would wait), and the collector that
// starts afterwards takes every line of it, in order; an unfinished line
// is kept when the collector stops.
func TestCollectorPipesHoldAtMostTheirBufferAndLoseNothing(t *testing.T) {
	dir, w := pipeDir(t)
	c := startTest(t, dir, options.LogConfig{MaxSize: 64 << 20, MaxFiles: 2})
	c.Close() // the daemon goes; QEMU's end keeps the pipe

	var held, n int
	for {
		line := fmt.Appendf(nil, "line %07d\n", n)
		k, err := unix.Write(int(w.Fd()), line)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil || k != len(line) {
			t.Fatalf("write: %d, %v", k, err)
		}
		held, n = held+k, n+1
	}
	if held > outputPipeSize {
		t.Fatalf("the stdout FIFO took %d bytes with no reader; its bound is %d", held, outputPipeSize)
	}
	c = startTest(t, dir, options.LogConfig{MaxSize: 64 << 20, MaxFiles: 2})
	c.Sync()
	unix.Write(int(w.Fd()), []byte("unfinished"))
	c.Sync()
	c.Close()
	c = startTest(t, dir, options.LogConfig{MaxSize: 64 << 20, MaxFiles: 2})
	entries := readAll(t, c)
	if len(entries) != n+1 {
		t.Fatalf("%d entries, want the %d lines written and the unfinished one", len(entries), n)
	}
	for i, e := range entries[:n] {
		if want := fmt.Sprintf("line %07d\n", i); e.Line != want {
			t.Fatalf("entry %d is %q, want %q", i, e.Line, want)
		}
	}
	if last := entries[n].Line; last != "unfinished" {
		t.Errorf("the unfinished line came out as %q", last)
	}
}

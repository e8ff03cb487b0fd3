package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	gort "runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vmm/qemu"
)

// TestLineWriterBoundsAHostileStatusPort plays a guest that writes a 10 MB
// status line without a newline, then a real record: the writer never
// holds more than maxStatusLine, drops the long line whole and still
// delivers the next one.
func TestLineWriterBoundsAHostileStatusPort(t *testing.T) {
	var got []string
	w := &lineWriter{fn: func(l []byte) { got = append(got, string(l)) }}
	w.Write([]byte("first\n"))
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	for range 10 {
		w.Write(chunk)
		if cap(w.buf) > 2*maxStatusLine {
			t.Fatalf("the line buffer grew to %d bytes", cap(w.buf))
		}
	}
	w.Write([]byte("still the long line\nsec"))
	w.Write([]byte("ond\n"))
	w.Write(append(bytes.Repeat([]byte("y"), maxStatusLine), '\n'))
	w.Write([]byte("third\n"))
	if want := []string{"first\n", "second\n", "third\n"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("lines delivered: %q, want %q", got, want)
	}
}

func TestReadStatusAndConsoleAreBounded(t *testing.T) {
	dir := t.TempDir()
	vm := &VM{Dir: dir}
	status := filepath.Join(dir, statusFile)
	f, err := os.Create(status)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"v":1,"kind":"started"}` + "\n")
	line := append(bytes.Repeat([]byte("z"), 4095), '\n')
	for range (8 << 20) / len(line) {
		f.Write(line)
	}
	f.Close()
	b, err := vm.readStatus()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > maxStatusRead || !bytes.HasPrefix(b, []byte(`{"v":1,"kind":"started"}`)) || b[len(b)-1] != '\n' {
		t.Errorf("readStatus of an 8 MiB file read %d bytes (bound %d), starting %.30q", len(b), maxStatusRead, b)
	}

	console := filepath.Join(dir, "console.log")
	f, _ = os.Create(console)
	for range (4 << 20) / len(line) {
		f.Write(line)
	}
	f.WriteString("Kernel panic - not syncing\n\nthe last line\n")
	f.Close()
	if got := lastLines(console, 2); got != "Kernel panic - not syncing | the last line" {
		t.Errorf("lastLines = %.80q", got)
	}
	tail, err := qemu.ReadTail(console, qemu.MaxTail)
	if err != nil || len(tail) > qemu.MaxTail {
		t.Errorf("ReadTail read %d bytes, bound %d (%v)", len(tail), qemu.MaxTail, err)
	}
}

// TestCollectorTakesABacklogInBoundedMemory plays a guest that wrote 48 MiB
// of stdout while no daemon ran: the collector that starts afterwards
// works through it without holding it in memory, and keeps every byte
// (the last line arrives, and the raw file's taken part is given back).
func TestCollectorTakesABacklogInBoundedMemory(t *testing.T) {
	dir := logDir(t)
	f, err := os.OpenFile(filepath.Join(dir, stdoutFile), os.O_WRONLY|os.O_APPEND, 0)
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

	gort.GC()
	var base gort.MemStats
	gort.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m gort.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			gort.ReadMemStats(&m)
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
	if err := unix.Stat(filepath.Join(dir, stdoutFile), &st); err != nil {
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
	for _, p := range []string{stdoutPipe, stderrPipe} {
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

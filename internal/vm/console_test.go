package vm

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/vmm/qemu"
)

// A guest that floods its console gets the host to keep no more than the
// cap, the newest output, in console.log and console.log.1.
func TestConsoleFloodKeepsOnlyTheCap(t *testing.T) {
	dir := t.TempDir()
	const capSize = 256 << 10
	c, err := startConsole(dir, capSize, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// The writer end as QEMU opens it.
	w, err := os.OpenFile(filepath.Join(dir, qemu.ConsolePipe+".out"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var last []byte
	for i := 0; i < 80000; i++ { // about 8 MiB
		last = fmt.Appendf(nil, "console line %08d %s\n", i, bytes.Repeat([]byte("x"), 80))
		if _, err := w.Write(last); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	c.stop()
	var total int64
	for _, p := range []string{"console.log", "console.log.1"} {
		st, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if st.Size() > capSize/2 {
			t.Errorf("%s holds %d bytes, more than half the cap %d", p, st.Size(), capSize)
		}
		total += st.Size()
	}
	if total > capSize {
		t.Errorf("console kept %d bytes, cap %d", total, capSize)
	}
	b, err := os.ReadFile(filepath.Join(dir, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(b, last) {
		t.Errorf("console.log does not end with the last line written %q; ends %q", last, b[max(0, len(b)-200):])
	}
}

// While no kiln process reads it (the daemon is down), the console FIFO
// holds at most its pipe buffer: a writer as QEMU is (non-blocking) is
// refused more, rather than growing a file.
func TestConsoleFIFOHoldsAtMostItsBuffer(t *testing.T) {
	dir := t.TempDir()
	c, err := startConsole(dir, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// Kiln goes away; QEMU's descriptor keeps the pipe and its buffer.
	w, err := os.OpenFile(qemu.ConsoleFIFO(dir), os.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	c.stop()
	chunk := make([]byte, 4096)
	var held int
	for held < 64<<20 {
		n, err := unix.Write(int(w.Fd()), chunk)
		if errors.Is(err, syscall.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		held += n
	}
	if held > consolePipeSize {
		t.Errorf("the console FIFO took %d bytes with no reader; its bound is %d", held, consolePipeSize)
	}
	if held < consolePipeSize {
		t.Errorf("the console FIFO took %d bytes, less than the pipe buffer kiln gives it (%d)", held, consolePipeSize)
	}
	// A new reader (the daemon back) finds what was held.
	c, err = startConsole(dir, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c.stop()
	st, err := os.Stat(filepath.Join(dir, qemu.ConsoleLog))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(held) {
		t.Errorf("the returning reader kept %d bytes of the %d held", st.Size(), held)
	}
}

func TestParseConsoleMaxSize(t *testing.T) {
	for in, want := range map[string]int64{"16m": 16 << 20, "64k": 64 << 10, "1g": 1 << 30} {
		if got, err := ParseConsoleMaxSize(in); err != nil || got != want {
			t.Errorf("ParseConsoleMaxSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1k", "lots", "-1m"} {
		if _, err := ParseConsoleMaxSize(in); err == nil {
			t.Errorf("ParseConsoleMaxSize(%q) accepted", in)
		}
	}
}

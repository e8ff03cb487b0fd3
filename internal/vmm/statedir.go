package vmm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The layout of a VM's state directory that every backend shares with
// the runtime: the serial console comes out of a FIFO the runtime copies
// into ConsoleLog, and pipe ports are pairs of FIFOs (Port.Pipe).
const (
	ConsoleLog = "console.log"
	// ConsolePipe names the serial console's FIFOs: the monitor writes
	// the console into ConsolePipe+".out" (and reads ConsolePipe+".in",
	// which nothing writes), and kiln copies what comes out into
	// ConsoleLog, capped and rotated. A FIFO holds at most its pipe
	// buffer: a guest that floods its console while no kiln process
	// reads it is held back by its serial port, it cannot grow a file on
	// the host.
	ConsolePipe = "console"
)

// ConsoleFIFO returns the FIFO in dir that a VM's serial console comes out
// of.
func ConsoleFIFO(dir string) string { return filepath.Join(dir, ConsolePipe+".out") }

// MakeConsole makes the console's FIFOs in dir (MakePipe).
func MakeConsole(dir string) error { return MakePipe(filepath.Join(dir, ConsolePipe)) }

// MakePipe makes the FIFOs of a pipe port or console, pipe+".in" and
// pipe+".out", unless they are there; a file of another kind in their
// place (left by an older kiln) is replaced.
func MakePipe(pipe string) error {
	for _, end := range []string{".in", ".out"} {
		p := pipe + end
		if st, err := os.Lstat(p); err == nil {
			if st.Mode()&os.ModeNamedPipe != 0 {
				continue
			}
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("replacing %s with a FIFO: %w", p, err)
			}
		}
		if err := unix.Mkfifo(p, 0o600); err != nil {
			return fmt.Errorf("creating FIFO %s: %w", p, err)
		}
	}
	return nil
}

// MaxTail is how much of the end of a log (the console, the monitor's
// own) LastLines reads: what a guest made long is never read whole.
const MaxTail = 64 << 10

// LastLines returns the last n non-empty lines of a file, joined by " | ",
// read from its last MaxTail bytes; "" when it has none.
func LastLines(path string, n int) string {
	b, err := ReadTail(path, MaxTail)
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// ReadTail reads at most limit bytes from the end of a file; when it starts
// mid-file, the partial first line is dropped.
func ReadTail(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(0, st.Size()-limit)
	b, err := io.ReadAll(io.NewSectionReader(f, off, limit))
	if err != nil {
		return nil, err
	}
	if off > 0 {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return b, nil
}

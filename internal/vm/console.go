package vm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vmm"
)

// DefaultConsoleMaxSize is how much of a VM's serial console kiln keeps on
// disk by default: console.log and console.log.1 together, each at most
// half of it.
const DefaultConsoleMaxSize = 16 << 20

// ConsoleMaxSizeEnv, when set, is the daemon's console cap unless
// --console-max-size is given.
const ConsoleMaxSizeEnv = "KILN_CONSOLE_MAX_SIZE"

// consolePipeSize is the console FIFO's pipe buffer: what a guest's console
// can hold while no kiln process reads it. A guest that writes more waits
// on its serial port until kiln takes it.
const consolePipeSize = 1 << 20

// consoleDrain is how long the copier keeps reading once its VM has ended:
// whatever QEMU left in the FIFO is already there, so it is read at once.
const consoleDrain = 100 * time.Millisecond

// consoleCopier copies a VM's serial console out of its FIFO into
// console.log while the VM runs. When console.log reaches half of max it
// becomes console.log.1 (replacing the one before) and a new console.log is
// started, so the two never hold more than max together.
type consoleCopier struct {
	dir  string
	max  int64
	log  *slog.Logger
	fifo *os.File
	done chan struct{}

	mu   sync.Mutex
	out  *os.File
	size int64
}

// startConsole opens the console FIFO of the VM in dir (making it when
// missing) and copies what comes out of it until stop. It is opened
// read-write, so it never reads end-of-file while no QEMU has it open, and
// its pipe buffer lives on while kiln restarts if the QEMU has it open.
func startConsole(dir string, max int64, log *slog.Logger) (*consoleCopier, error) {
	if max <= 0 {
		max = DefaultConsoleMaxSize
	}
	if err := vmm.MakeConsole(dir); err != nil {
		return nil, err
	}
	fifo, err := os.OpenFile(vmm.ConsoleFIFO(dir), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening VM console: %w", err)
	}
	if rc, err := fifo.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, consolePipeSize) })
	}
	c := &consoleCopier{dir: dir, max: max, log: log, fifo: fifo, done: make(chan struct{})}
	if err := c.open(); err != nil {
		fifo.Close()
		return nil, err
	}
	go c.copy()
	return c, nil
}

func (c *consoleCopier) path() string { return filepath.Join(c.dir, vmm.ConsoleLog) }

// open opens console.log to append to. Preconditions: c.mu held, or c not
// yet shared.
func (c *consoleCopier) open() error {
	out, err := os.OpenFile(c.path(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening console log: %w", err)
	}
	st, err := out.Stat()
	if err != nil {
		out.Close()
		return fmt.Errorf("opening console log: %w", err)
	}
	c.out, c.size = out, st.Size()
	return nil
}

func (c *consoleCopier) copy() {
	defer close(c.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := c.fifo.Read(buf)
		if n > 0 {
			if werr := c.write(buf[:n]); werr != nil {
				c.log.Warn("keeping VM console", "dir", c.dir, "err", werr)
			}
		}
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) {
				c.log.Warn("reading VM console", "dir", c.dir, "err", err)
			}
			return
		}
	}
}

// write appends p to console.log, rotating first when p would take it past
// half the cap.
func (c *consoleCopier) write(p []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	half := max(c.max/2, 4096)
	for len(p) > 0 {
		if c.size >= half {
			if err := c.rotate(); err != nil {
				return err
			}
		}
		n := min(int64(len(p)), half-c.size)
		if _, err := c.out.Write(p[:n]); err != nil {
			return err
		}
		c.size += n
		p = p[n:]
	}
	return nil
}

// rotate makes console.log console.log.1. Preconditions: c.mu held.
func (c *consoleCopier) rotate() error {
	c.out.Close()
	if err := os.Rename(c.path(), c.path()+".1"); err != nil {
		return fmt.Errorf("rotating console log: %w", err)
	}
	return c.open()
}

// stop takes what the VM left in the FIFO and stops copying. It is called
// once the VM's QEMU has exited; safe on nil.
func (c *consoleCopier) stop() {
	if c == nil {
		return
	}
	_ = c.fifo.SetReadDeadline(time.Now().Add(consoleDrain))
	<-c.done
	c.fifo.Close()
	c.mu.Lock()
	c.out.Close()
	c.mu.Unlock()
}

// minConsoleMaxSize is the smallest console cap: two 32 KiB files keep a
// boot's worth of kernel messages.
const minConsoleMaxSize = 64 << 10

// ParseConsoleMaxSize parses the console cap (--console-max-size), a size
// like 16m of at least 64k.
func ParseConsoleMaxSize(s string) (int64, error) {
	n, err := options.ParseSize(s)
	if err != nil || n < minConsoleMaxSize {
		return 0, errdefs.Invalid(fmt.Sprintf("invalid --console-max-size %q: want a size of at least 64k, like 16m", s))
	}
	return n, nil
}

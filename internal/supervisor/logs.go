package supervisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vm"
)

// LogEntry is one line of a VM's output.
type LogEntry struct {
	Stream string    `json:"stream"` // stdout or stderr
	Time   time.Time `json:"time"`
	Line   string    `json:"log"` // with its newline, when it had one
}

// Log files in a VM's directory.
const (
	logFile     = "vm.log"      // JSON lines; rotated to vm.log.1, vm.log.2, …
	offsetsFile = "log.offsets" // how far stdout.log and stderr.log are taken
	// maxLine splits longer lines, as docker does at 16 KiB.
	maxLine = 16 << 10
	// punchEvery is how much consumed raw output accumulates before its
	// disk space is given back.
	punchEvery = 1 << 20
	// takeChunk is how much raw output is read at a time.
	takeChunk = 256 << 10
)

// takeBufs holds the buffers raw output is read into, shared by the
// collectors of all VMs: most takes are small and frequent.
var takeBufs = sync.Pool{New: func() any { b := make([]byte, takeChunk); return &b }}

// collector turns a VM's raw output (what the guest writes to stdout.log
// and stderr.log) into timestamped JSON lines in vm.log, rotated by size,
// and hands new lines to followers. The raw files are written by QEMU
// whether or not kiln runs; the collector resumes from offsets it saves,
// so nothing is lost or doubled across daemon restarts, and it punches
// holes in what it has taken so the raw files take no space.
type collector struct {
	dir string
	cfg options.LogConfig
	log *slog.Logger

	// mu guards the fields below and orders writes with subscriptions: a
	// follower that subscribes under mu sees every line after the files it
	// read under mu.
	mu      sync.Mutex
	out     *os.File
	size    int64
	offsets [2]int64 // stdout, stderr
	punched [2]int64
	partial [2][]byte
	subs    map[chan LogEntry]struct{}
	closed  bool

	notify *os.File // inotify on the raw files (file mode)
	// pipes are the output FIFOs (pipe mode), read-write so that they
	// never read end-of-file and their buffers outlive a QEMU that exits.
	pipes [2]*os.File
	stop  chan struct{}
	done  chan struct{}
}

var streams = [2]string{"stdout", "stderr"}

func rawFile(dir string, i int) string {
	if i == 0 {
		return filepath.Join(dir, vm.StdoutFile)
	}
	return filepath.Join(dir, vm.StderrFile)
}

// pipeFIFO is the FIFO stream i comes out of, in pipe mode.
func pipeFIFO(dir string, i int) string {
	if i == 0 {
		return filepath.Join(dir, vm.StdoutPipe+".out")
	}
	return filepath.Join(dir, vm.StderrPipe+".out")
}

// outputPipeSize is the pipe buffer of each output FIFO: what a guest's
// stdout or stderr holds while no daemon reads it, before its writes wait.
const outputPipeSize = 1 << 20

// startCollector starts collecting the output of the VM in dir: from its
// FIFOs (pipe mode) when it has them, else from the raw files an older
// kiln's VM appends to (file mode).
func startCollector(dir string, cfg options.LogConfig, log *slog.Logger) (*collector, error) {
	c := &collector{dir: dir, cfg: cfg, log: log, subs: map[chan LogEntry]struct{}{}, stop: make(chan struct{}), done: make(chan struct{})}
	if st, err := os.Lstat(pipeFIFO(dir, 0)); err == nil && st.Mode()&os.ModeNamedPipe != 0 {
		return c, c.startPipes()
	}
	if b, err := os.ReadFile(filepath.Join(dir, offsetsFile)); err == nil {
		f := strings.Fields(string(b))
		for i := 0; i < 2 && i < len(f); i++ {
			c.offsets[i], _ = strconv.ParseInt(f[i], 10, 64)
		}
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating inotify: %w", err)
	}
	for i := range streams {
		if _, err := unix.InotifyAddWatch(fd, rawFile(dir, i), unix.IN_MODIFY); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("watching VM output: %w", err)
		}
	}
	c.notify = os.NewFile(uintptr(fd), "inotify")
	out, err := os.OpenFile(filepath.Join(dir, logFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		c.notify.Close()
		return nil, fmt.Errorf("opening VM log: %w", err)
	}
	st, _ := out.Stat()
	c.out, c.size = out, st.Size()
	c.Sync()
	go c.loop()
	return c, nil
}

// closedCollector stands in for a VM whose output cannot be collected (its
// directory is gone or broken): it reads what dir still holds, if anything,
// and collects nothing.
func closedCollector(dir string) *collector {
	c := &collector{dir: dir, cfg: options.LogConfig{MaxFiles: options.DefaultLogMaxFiles}, closed: true, subs: map[chan LogEntry]struct{}{}, done: make(chan struct{})}
	close(c.done)
	return c
}

// startPipes opens the output FIFOs and reads them as they fill. Each
// stream is taken only under c.mu, by its reader or by Sync, so its
// entries keep the order the guest wrote them in.
func (c *collector) startPipes() error {
	for i := range streams {
		f, err := os.OpenFile(pipeFIFO(c.dir, i), os.O_RDWR|unix.O_NONBLOCK, 0)
		if err != nil {
			c.closePipes()
			return fmt.Errorf("opening VM output: %w", err)
		}
		if rc, err := f.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, outputPipeSize) })
		}
		c.pipes[i] = f
	}
	out, err := os.OpenFile(filepath.Join(c.dir, logFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		c.closePipes()
		return fmt.Errorf("opening VM log: %w", err)
	}
	st, _ := out.Stat()
	c.out, c.size = out, st.Size()
	readers := make(chan struct{}, 2)
	for i := range streams {
		rc, err := c.pipes[i].SyscallConn()
		if err != nil {
			return err
		}
		go func() {
			defer func() { readers <- struct{}{} }()
			// Read calls the function each time the FIFO turns readable,
			// until it reports true or the FIFO is closed.
			// The lock is let go between chunks, so a guest that never
			// stops writing does not keep readers of the log out.
			_ = rc.Read(func(fd uintptr) bool {
				for {
					c.mu.Lock()
					if c.closed {
						c.mu.Unlock()
						return true
					}
					empty := c.drainChunk(i, int(fd))
					c.mu.Unlock()
					if empty {
						return false
					}
				}
			})
		}()
	}
	go func() {
		<-readers
		<-readers
		close(c.done)
	}()
	return nil
}

// drain takes what stream i's FIFO holds now: at most twice its buffer,
// so a guest that never stops writing cannot keep it going. Preconditions:
// c.mu held.
func (c *collector) drain(i, fd int) {
	for range 2 * outputPipeSize / takeChunk {
		if c.drainChunk(i, fd) {
			return
		}
	}
}

// drainChunk takes at most one buffer of stream i's FIFO, and reports
// whether the FIFO is empty. Preconditions: c.mu held.
func (c *collector) drainChunk(i, fd int) (empty bool) {
	bp := takeBufs.Get().(*[]byte)
	defer takeBufs.Put(bp)
	n, err := unix.Read(fd, *bp)
	if n > 0 {
		if err := c.lines(i, (*bp)[:n]); err != nil {
			c.log.Warn("collecting VM output", "dir", c.dir, "err", err)
		}
	}
	return n <= 0 || err != nil
}

// syncPipes takes what the FIFOs hold now. Preconditions: c.mu held.
func (c *collector) syncPipes() {
	for i, f := range c.pipes {
		if rc, err := f.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { c.drain(i, int(fd)) })
		}
	}
}

func (c *collector) closePipes() {
	for i, f := range c.pipes {
		if f != nil {
			f.Close()
			c.pipes[i] = nil
		}
	}
}

func (c *collector) loop() {
	defer close(c.done)
	buf := make([]byte, 4096)
	for {
		if _, err := c.notify.Read(buf); err != nil {
			return // closed by Close
		}
		c.Sync()
	}
}

// Sync takes everything the FIFOs or raw files hold now.
func (c *collector) Sync() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if c.pipes[0] != nil {
		c.syncPipes()
		return
	}
	for i := range streams {
		if err := c.take(i); err != nil {
			c.log.Warn("collecting VM output", "dir", c.dir, "err", err)
		}
	}
	if err := c.saveOffsets(); err != nil {
		c.log.Warn("saving log offsets", "dir", c.dir, "err", err)
	}
}

// take reads stream i from its offset to the end, takeChunk bytes at a
// time: a backlog the guest wrote while no daemon ran is worked through in
// bounded memory however large it is. Preconditions: c.mu held.
func (c *collector) take(i int) error {
	// Read-write: punching holes needs a writable descriptor.
	f, err := os.OpenFile(rawFile(c.dir, i), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	bp := takeBufs.Get().(*[]byte)
	defer takeBufs.Put(bp)
	buf := *bp
	for {
		n, err := f.ReadAt(buf, c.offsets[i]+int64(len(c.partial[i])))
		if n > 0 {
			if err := c.lines(i, buf[:n]); err != nil {
				return err
			}
			if c.offsets[i]-c.punched[i] >= punchEvery {
				end := c.offsets[i] &^ 4095
				if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, end); err == nil {
					c.punched[i] = end
				}
			}
		}
		if errors.Is(err, io.EOF) || n == 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// lines emits the whole lines of stream i that data completes, splitting
// any longer than maxLine, and keeps the unfinished rest (under maxLine).
// Preconditions: c.mu held.
func (c *collector) lines(i int, data []byte) error {
	now := time.Now().UTC()
	pending := append(c.partial[i], data...)
	for len(pending) > 0 {
		n := bytes.IndexByte(pending, '\n') + 1
		switch {
		case n == 0 && len(pending) < maxLine:
			n = -1 // an unfinished line: wait for the rest
		case n == 0 || n > maxLine:
			n = maxLine
		}
		if n < 0 {
			break
		}
		if err := c.emit(LogEntry{Stream: streams[i], Time: now, Line: string(pending[:n])}); err != nil {
			return err
		}
		c.offsets[i] += int64(n)
		pending = pending[n:]
	}
	c.partial[i] = append(c.partial[i][:0:0], pending...)
	return nil
}

// flushPartial emits lines that never got their newline (the VM ended).
// Preconditions: c.mu held.
func (c *collector) flushPartial() {
	for i := range streams {
		if len(c.partial[i]) > 0 {
			if err := c.emit(LogEntry{Stream: streams[i], Time: time.Now().UTC(), Line: string(c.partial[i])}); err == nil {
				c.offsets[i] += int64(len(c.partial[i]))
			}
			c.partial[i] = nil
		}
	}
	if c.pipes[0] == nil {
		_ = c.saveOffsets()
	}
}

// emit writes one entry, rotating first when the file is full, and hands it
// to followers. Preconditions: c.mu held.
func (c *collector) emit(e LogEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if c.size > 0 && c.size+int64(len(b)) > c.cfg.MaxSize {
		if err := c.rotate(); err != nil {
			return err
		}
	}
	if _, err := c.out.Write(b); err != nil {
		return err
	}
	c.size += int64(len(b))
	for ch := range c.subs {
		select {
		case ch <- e:
		default:
			// A follower that does not keep up is dropped rather than
			// allowed to stall the VM's logging.
			close(ch)
			delete(c.subs, ch)
		}
	}
	return nil
}

// rotate shifts vm.log to vm.log.1 (and so on), keeping MaxFiles files.
// Preconditions: c.mu held.
func (c *collector) rotate() error {
	if err := c.out.Close(); err != nil {
		return err
	}
	base := filepath.Join(c.dir, logFile)
	os.Remove(base + "." + strconv.Itoa(c.cfg.MaxFiles-1))
	for n := c.cfg.MaxFiles - 2; n >= 1; n-- {
		os.Rename(base+"."+strconv.Itoa(n), base+"."+strconv.Itoa(n+1))
	}
	if c.cfg.MaxFiles > 1 {
		if err := os.Rename(base, base+".1"); err != nil {
			return err
		}
	} else {
		os.Remove(base)
	}
	out, err := os.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	c.out, c.size = out, 0
	return nil
}

func (c *collector) saveOffsets() error {
	p := filepath.Join(c.dir, offsetsFile)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", c.offsets[0], c.offsets[1]), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// VMEnded takes the last output of a run, including an unfinished last line.
func (c *collector) VMEnded() {
	c.Sync()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.flushPartial()
	}
}

// EndFollowers ends every follow: the VM has ended for good (no restart
// follows).
func (c *collector) EndFollowers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch := range c.subs {
		close(ch)
		delete(c.subs, ch)
	}
}

// Close stops collecting and ends every follower.
func (c *collector) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if c.pipes[0] != nil {
		// A daemon that stops takes what the FIFOs hold, unfinished
		// lines as they are; what the guest writes after waits in the
		// FIFOs for the next daemon.
		c.syncPipes()
		c.flushPartial()
	}
	c.closed = true
	for ch := range c.subs {
		close(ch)
		delete(c.subs, ch)
	}
	c.out.Close()
	c.mu.Unlock()
	if c.notify != nil {
		c.notify.Close()
	}
	c.closePipes()
	<-c.done
}

// LogQuery selects log entries.
type LogQuery struct {
	Since  time.Time // entries at or after
	Until  time.Time // entries before, when not zero
	Tail   int       // the last n entries; < 0 means all
	Follow bool
}

// Read returns the stored entries matching q and, with q.Follow, a channel
// of the entries that come after them (closed when the VM ends for good or
// is removed), and a cancel function that must be called when done.
func (c *collector) Read(q LogQuery, running bool) ([]LogEntry, <-chan LogEntry, func(), error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	entries, err := readLogFiles(c.dir, c.cfg.MaxFiles, q)
	if err != nil {
		return nil, nil, nil, err
	}
	if !q.Follow || c.closed {
		return entries, nil, func() {}, nil
	}
	ch := make(chan LogEntry, 1024)
	if !running {
		close(ch)
		return entries, ch, func() {}, nil
	}
	c.subs[ch] = struct{}{}
	cancel := func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.subs[ch]; ok {
			delete(c.subs, ch)
			close(ch)
		}
	}
	return entries, ch, cancel, nil
}

// readLogFiles reads the stored entries, oldest file first.
func readLogFiles(dir string, maxFiles int, q LogQuery) ([]LogEntry, error) {
	base := filepath.Join(dir, logFile)
	var out []LogEntry
	for n := maxFiles - 1; n >= 0; n-- {
		p := base
		if n > 0 {
			p = base + "." + strconv.Itoa(n)
		}
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading logs: %w", err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var e LogEntry
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				continue
			}
			if !q.Since.IsZero() && e.Time.Before(q.Since) {
				continue
			}
			if !q.Until.IsZero() && !e.Time.Before(q.Until) {
				continue
			}
			out = append(out, e)
			if q.Tail >= 0 && len(out) >= 2*q.Tail+1024 {
				// Only the last Tail are wanted: memory stays bounded by
				// the tail asked for, not by the size of the logs.
				out = append(out[:0], out[len(out)-q.Tail:]...)
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading logs: %w", err)
		}
	}
	if q.Tail >= 0 && len(out) > q.Tail {
		out = out[len(out)-q.Tail:]
	}
	return out, nil
}

// Package follow reads a file as it grows, like `tail -f`: it is how the
// host reads what a guest writes to its file-backed ports (program output,
// status records) while the VM runs. It waits on inotify, not on a timer.
package follow

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Follower reads a file from an offset as data is appended to it.
type Follower struct {
	f      *os.File
	notify *os.File // inotify descriptor, in the runtime's poller
	stop   chan struct{}
}

// Open starts following path from offset. The file must exist.
func Open(path string, offset int64) (*Follower, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_MODIFY|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		unix.Close(fd)
		return nil, fmt.Errorf("seeking %s: %w", path, err)
	}
	return &Follower{f: f, notify: os.NewFile(uintptr(fd), "inotify"), stop: make(chan struct{})}, nil
}

// Copy copies the file's content to w as it grows until Stop is called, then
// copies what remains and returns. The watch is registered before the first
// read, so no write between the read and the wait is missed.
func (fl *Follower) Copy(w io.Writer) error {
	defer fl.f.Close()
	buf := make([]byte, 32*1024)
	events := make([]byte, 4096)
	for {
		for {
			n, err := fl.f.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					fl.notify.Close()
					return fmt.Errorf("copying %s: %w", fl.f.Name(), werr)
				}
			}
			if errors.Is(err, io.EOF) || n == 0 {
				break
			}
			if err != nil {
				fl.notify.Close()
				return fmt.Errorf("reading %s: %w", fl.f.Name(), err)
			}
		}
		if _, err := fl.notify.Read(events); err != nil {
			// Stop closed the descriptor: drain what is left and end.
			_, err := io.Copy(w, fl.f)
			if err != nil {
				return fmt.Errorf("copying %s: %w", fl.f.Name(), err)
			}
			return nil
		}
	}
}

// Stop makes Copy drain the file and return.
func (fl *Follower) Stop() {
	select {
	case <-fl.stop:
	default:
		close(fl.stop)
		fl.notify.Close()
	}
}

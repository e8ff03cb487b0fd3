package vm

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/follow"
	"kiln.dev/kiln/internal/unixsock"
)

// statusSource is where a run's status records come from: the VM's status
// socket, or, for a VM made by an older kiln, the file its QEMU appends
// them to (a follow.Follower).
type statusSource interface {
	// Copy writes the records to w as they come, until Stop.
	Copy(w io.Writer) error
	// Stop ends Copy once what the source still holds is taken.
	Stop()
}

// statusSocket reads the status records from the VM's status socket. The
// guest's writes to its status port wait while no kiln process is
// connected, so a record is never written where nothing takes it; kiln
// keeps the ones it takes in status.jsonl, a file only kiln writes.
type statusSocket struct {
	path string

	mu      sync.Mutex
	conn    net.Conn
	stopped bool
}

// Copy connects to the status socket and copies what comes, until Stop.
// Should the connection fail or end while QEMU still runs, it connects
// again: the guest's status writes wait for as long as no kiln process is
// connected, so the watcher must stay connected for the whole run.
func (s *statusSocket) Copy(w io.Writer) error {
	for {
		conn, err := s.dial()
		if conn == nil {
			return err // stopped
		}
		_, _ = io.Copy(w, conn)
		conn.Close()
		s.mu.Lock()
		s.conn = nil
		stopped := s.stopped
		s.mu.Unlock()
		if stopped {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dial connects to the status socket, trying until it can or Stop; it
// returns nil once stopped.
func (s *statusSocket) dial() (net.Conn, error) {
	for {
		s.mu.Lock()
		stopped := s.stopped
		s.mu.Unlock()
		if stopped {
			return nil, nil
		}
		var conn net.Conn
		err := unixsock.WithPath(s.path, func(p string) error {
			var err error
			conn, err = net.DialTimeout("unix", p, time.Second)
			return err
		})
		if err == nil {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.stopped {
				conn.Close()
				return nil, nil
			}
			s.conn = conn
			return conn, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop lets Copy read what the socket still holds (QEMU has exited, so it
// ends at once), for a second at most.
func (s *statusSocket) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if s.conn != nil {
		_ = s.conn.SetReadDeadline(time.Now().Add(time.Second))
	}
}

// statusLog appends the status records kiln takes from the socket to
// status.jsonl, at most maxStatusRead bytes of them: a guest that sends
// more only loses its own.
type statusLog struct {
	f    *os.File
	size int64
}

func openStatusLog(dir string) (*statusLog, error) {
	f, err := os.OpenFile(filepath.Join(dir, statusFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening VM status: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &statusLog{f: f, size: st.Size()}, nil
}

// add keeps a record line, synced: how a run ended must outlive the daemon.
func (l *statusLog) add(line []byte) {
	if l == nil || l.size+int64(len(line)) > maxStatusRead {
		return
	}
	if n, err := l.f.Write(line); err == nil {
		l.size += int64(n)
		_ = l.f.Sync()
	}
}

func (l *statusLog) close() {
	if l != nil {
		l.f.Close()
	}
}

// statusSource returns where the VM's status records come from, and the
// file kiln keeps them in (nil when QEMU writes the file itself).
func (vm *VM) statusSource() (statusSource, *statusLog, error) {
	for _, p := range vm.cfg.Ports {
		if p.Name != agent.PortStatus || p.Socket == "" {
			continue
		}
		l, err := openStatusLog(vm.Dir)
		if err != nil {
			return nil, nil, err
		}
		return &statusSocket{path: p.Socket}, l, nil
	}
	fl, err := follow.Open(filepath.Join(vm.Dir, statusFile), 0)
	if err != nil {
		return nil, nil, fmt.Errorf("watching VM status: %w", err)
	}
	return fl, nil, nil
}

package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// hostileQMP plays a QEMU taken over by its guest: it speaks QMP, and when
// told to migrate into the descriptor it was given it writes without end
// and never reports the save complete. It returns how many bytes it got
// written.
func hostileQMP(t *testing.T, sock string) *atomic.Int64 {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var written atomic.Int64
	go func() {
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return
			}
			go serveHostile(c, &written)
		}
	}()
	return &written
}

func serveHostile(c *net.UnixConn, written *atomic.Int64) {
	defer c.Close()
	_, _ = c.Write([]byte(`{"QMP":{"version":{"qemu":{"major":7,"minor":2,"micro":0}},"capabilities":["oob"]}}` + "\n"))
	var fd = -1
	buf, oob := make([]byte, 64<<10), make([]byte, 1024)
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if fds, err := syscall.ParseUnixRights(&m); err == nil && len(fds) > 0 {
					fd = fds[0]
				}
			}
		}
		dec := json.NewDecoder(bytes.NewReader(buf[:n]))
		for {
			var cmd struct {
				Execute string `json:"execute"`
			}
			if dec.Decode(&cmd) != nil {
				break
			}
			reply := `{"return":{}}`
			switch cmd.Execute {
			case "migrate":
				go func(fd int) { // the flood
					f := os.NewFile(uintptr(fd), "state")
					chunk := make([]byte, 1<<20)
					for {
						n, err := f.Write(chunk)
						written.Add(int64(n))
						if err != nil {
							return
						}
					}
				}(fd)
			case "query-migrate":
				reply = `{"return":{"status":"active"}}`
			}
			if _, err := c.Write([]byte(reply + "\n")); err != nil {
				return
			}
		}
	}
}

// A QEMU that writes more state than its guest's memory can fill does not
// fill the host's disk: the save stops at its bound, fails naming it, and
// the file holds no more than the bound.
func TestSaveBoundsAHostileQEMUsState(t *testing.T) {
	cmd := startHelper(t, ProcessName("hostile"))
	cfg := testConfig(t, "hostile") // 64 MiB of guest memory
	writePIDFile(t, cfg.Dir, strconv.Itoa(cmd.Process.Pid)+"\n")
	m, err := Attach(cfg)
	if err != nil {
		t.Fatal(err)
	}
	written := hostileQMP(t, filepath.Join(cfg.Dir, QMPSocket))
	f, err := os.Create(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = m.Save(ctx, f)
	if !errors.Is(err, ErrStateTooLarge) {
		t.Fatalf("Save = %v, want ErrStateTooLarge", err)
	}
	limit := stateLimit(cfg.MemoryMiB)
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > limit+1 {
		t.Errorf("the state file grew to %d bytes, past the bound of %d", st.Size(), limit)
	}
	// The flood stops: the stream is closed, so writes fail.
	time.Sleep(200 * time.Millisecond)
	before := written.Load()
	time.Sleep(300 * time.Millisecond)
	if after := written.Load(); after != before {
		t.Errorf("the hostile QEMU still writes: %d bytes, then %d", before, after)
	}
	if before < limit {
		t.Errorf("the hostile QEMU wrote only %d bytes; the test wants it past the bound of %d", before, limit)
	}
}

package follow

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// notifyBuffer is a goroutine-safe buffer that signals each write.
type notifyBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func newNotifyBuffer() *notifyBuffer { return &notifyBuffer{wrote: make(chan struct{}, 1)} }

func (b *notifyBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	n, err := b.buf.Write(p)
	b.mu.Unlock()
	select {
	case b.wrote <- struct{}{}:
	default:
	}
	return n, err
}

func (b *notifyBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

func (b *notifyBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitLen blocks until b holds at least n bytes.
func (b *notifyBuffer) waitLen(n int) {
	for b.Len() < n {
		<-b.wrote
	}
}

func TestFollow(t *testing.T) {
	tests := []struct {
		name string
		// initial is in the file before Open; offset is where Open starts.
		initial string
		offset  int64
		chunks  []string
		// followed: wait for each chunk to be copied before writing the
		// next, proving Copy delivers while the file grows, not just at Stop.
		followed bool
		// last is written just before Stop, with no wait.
		last string
	}{
		{name: "chunks while following", chunks: []string{"hello ", "world\n", "third chunk\n"}, followed: true, last: "just before stop\n"},
		{name: "existing content from offset", initial: "skipped:kept ", offset: 8, chunks: []string{"more\n"}, followed: true, last: "end"},
		{name: "burst without waiting", chunks: burst(200), last: "tail"},
		{name: "only data before stop", last: "only this"},
		{name: "nothing written"},
		{name: "large chunk", chunks: []string{string(bytes.Repeat([]byte("x"), 100_000))}, followed: true, last: "!"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "out")
			if err := os.WriteFile(p, []byte(tt.initial), 0o600); err != nil {
				t.Fatal(err)
			}
			fl, err := Open(p, tt.offset)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			dst := newNotifyBuffer()
			copyErr := make(chan error, 1)
			go func() { copyErr <- fl.Copy(dst) }()

			w, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			want := tt.initial[tt.offset:]
			dst.waitLen(len(want))
			writerDone := make(chan error, 1)
			go func() {
				sent := len(want)
				for _, c := range tt.chunks {
					if _, err := w.WriteString(c); err != nil {
						writerDone <- err
						return
					}
					sent += len(c)
					if tt.followed {
						dst.waitLen(sent)
					}
				}
				_, err := w.WriteString(tt.last)
				writerDone <- err
			}()
			if err := <-writerDone; err != nil {
				t.Fatal(err)
			}
			fl.Stop()
			fl.Stop() // idempotent
			if err := <-copyErr; err != nil {
				t.Fatalf("Copy: %v", err)
			}
			for _, c := range tt.chunks {
				want += c
			}
			want += tt.last
			if got := dst.String(); got != want {
				t.Errorf("copied %d bytes, want %d\n got %.80q\nwant %.80q", len(got), len(want), got, want)
			}
		})
	}
}

func burst(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("line %d\n", i)
	}
	return out
}

func TestStopBeforeCopy(t *testing.T) {
	p := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(p, []byte("already there"), 0o600); err != nil {
		t.Fatal(err)
	}
	fl, err := Open(p, 0)
	if err != nil {
		t.Fatal(err)
	}
	fl.Stop()
	var buf bytes.Buffer
	if err := fl.Copy(&buf); err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if buf.String() != "already there" {
		t.Errorf("Copy = %q", buf.String())
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestCopyWriterError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(p, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	fl, err := Open(p, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Stop()
	boom := errors.New("boom")
	if err := fl.Copy(failWriter{boom}); !errors.Is(err, boom) {
		t.Errorf("Copy to failing writer = %v, want it to wrap %v", err, boom)
	}
}

func TestOpenMissing(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing")
	if fl, err := Open(p, 0); err == nil {
		fl.Stop()
		t.Fatal("Open of a missing file succeeded")
	}
}

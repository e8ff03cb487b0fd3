package unixsock

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dirOfLength returns a directory under t.TempDir() whose path is exactly
// n bytes long (n must exceed the temp dir's length by at least 2).
func dirOfLength(t *testing.T, n int) string {
	t.Helper()
	d := t.TempDir()
	for rest := n - len(d); rest > 0; rest = n - len(d) {
		// Each step adds "/" and seg bytes; never leave exactly 1 byte,
		// which no further step can add.
		seg := 50
		switch {
		case rest < 2:
			t.Fatalf("cannot reach length %d from %q", n, d)
		case rest <= 51:
			seg = rest - 1
		case rest-51 < 2:
			seg = 40
		}
		d = filepath.Join(d, strings.Repeat("d", seg))
	}
	if len(d) != n {
		t.Fatalf("made %d-byte dir, want %d", len(d), n)
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestWithPathShort(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{len(dir) + len("/s"), MaxPath} {
		// A path of exactly n bytes: dir + "/" + name.
		p := filepath.Join(dir, strings.Repeat("s", n-len(dir)-1))
		if len(p) != n {
			t.Fatalf("path length %d, want %d", len(p), n)
		}
		var got string
		if err := WithPath(p, func(s string) error { got = s; return nil }); err != nil {
			t.Fatalf("WithPath(%d bytes): %v", n, err)
		}
		if got != p {
			t.Errorf("WithPath(%d-byte path) passed %q, want the path itself", n, got)
		}
	}
}

func TestWithPathPropagatesError(t *testing.T) {
	boom := errors.New("boom")
	for _, p := range []string{"/tmp/short.sock", filepath.Join(dirOfLength(t, 150), "x.sock")} {
		if err := WithPath(p, func(string) error { return boom }); !errors.Is(err, boom) {
			t.Errorf("WithPath(%d bytes) = %v, want %v", len(p), err, boom)
		}
	}
}

func TestWithPathLong(t *testing.T) {
	for _, total := range []int{MaxPath + 1, 200, 400} {
		dir := dirOfLength(t, total-len("/test.sock"))
		sock := filepath.Join(dir, "test.sock")
		if len(sock) != total {
			t.Fatalf("socket path is %d bytes, want %d", len(sock), total)
		}
		var passed string
		var l *net.UnixListener
		err := WithPath(sock, func(p string) error {
			passed = p
			var err error
			l, err = net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
			return err
		})
		if err != nil {
			t.Fatalf("listening on a %d-byte path: %v", total, err)
		}
		// Closing must not unlink through the /proc path, whose descriptor
		// is gone by then.
		l.SetUnlinkOnClose(false)
		defer l.Close()
		if !strings.HasPrefix(passed, "/proc/self/fd/") || !strings.HasSuffix(passed, "/test.sock") || len(passed) > MaxPath {
			t.Errorf("WithPath passed %q, want a short /proc/self/fd/N/test.sock", passed)
		}
		// The socket was made at the real, long path.
		st, err := os.Stat(sock)
		if err != nil || st.Mode().Type() != os.ModeSocket {
			t.Fatalf("stat %s: %v, %v; want a socket", sock, st, err)
		}

		accepted := make(chan error, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				accepted <- err
				return
			}
			defer c.Close()
			_, err = c.Write([]byte("hello"))
			accepted <- err
		}()
		var conn net.Conn
		if err := WithPath(sock, func(p string) error {
			var err error
			conn, err = net.Dial("unix", p)
			return err
		}); err != nil {
			t.Fatalf("dialing a %d-byte path: %v", total, err)
		}
		got, err := io.ReadAll(conn)
		conn.Close()
		if err != nil || string(got) != "hello" {
			t.Errorf("read %q, %v; want hello", got, err)
		}
		if err := <-accepted; err != nil {
			t.Errorf("accept/write: %v", err)
		}
	}
}

func TestWithPathErrors(t *testing.T) {
	t.Run("missing directory", func(t *testing.T) {
		p := filepath.Join(dirOfLength(t, 150), "missing", "x.sock")
		called := false
		if err := WithPath(p, func(string) error { called = true; return nil }); err == nil {
			t.Error("WithPath in a missing directory succeeded")
		}
		if called {
			t.Error("fn was called")
		}
	})
	t.Run("name too long", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), strings.Repeat("n", 120))
		called := false
		if err := WithPath(p, func(string) error { called = true; return nil }); err == nil {
			t.Error("WithPath with a 120-byte socket name succeeded")
		}
		if called {
			t.Error("fn was called")
		}
	})
}

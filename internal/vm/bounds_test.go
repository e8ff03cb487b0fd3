package vm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

package kernel

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
)

// entry is one archive member read back with the cpio library, plus the
// device numbers, which that library does not report and which are read
// from the raw newc header.
type entry struct {
	Name     string
	Mode     cpio.FileMode
	Size     int64
	Linkname string
	Data     []byte
	Links    int
	Inode    int64
	RMajor   uint32
	RMinor   uint32
}

// readArchive reads one newc archive (up to its trailer) with the cpio
// library, and cross-checks every header against the format in the
// kernel's Documentation/driver-api/early-userspace/buffer-format.rst.
func readArchive(t *testing.T, data []byte) []entry {
	t.Helper()
	raw := rawHeaders(t, data)
	r := cpio.NewReader(bytes.NewReader(data))
	var out []entry
	for i := 0; ; i++ {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading archive entry %d: %v", i, err)
		}
		content, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("reading %s: %v", h.Name, err)
		}
		if i >= len(raw) {
			t.Fatalf("cpio library read more entries than the raw parser")
		}
		if raw[i].name != h.Name {
			t.Fatalf("entry %d: raw name %q, library name %q", i, raw[i].name, h.Name)
		}
		out = append(out, entry{
			Name: h.Name, Mode: h.Mode, Size: h.Size, Linkname: h.Linkname, Data: content,
			Links: h.Links, Inode: h.Inode, RMajor: raw[i].rmajor, RMinor: raw[i].rminor,
		})
	}
	if len(out) != len(raw) {
		t.Fatalf("cpio library read %d entries, raw parser %d", len(out), len(raw))
	}
	return out
}

type rawHeader struct {
	name           string
	fields         [13]uint64
	rmajor, rminor uint32
}

// rawHeaders parses newc headers by hand: "070701", then 13 fields of 8
// hex digits (ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
// devminor, rdevmajor, rdevminor, namesize, check), the NUL-terminated name
// padded so that the data starts on a multiple of 4, the data padded
// likewise. It stops after TRAILER!!! and returns the entries before it.
func rawHeaders(t *testing.T, data []byte) []rawHeader {
	t.Helper()
	var out []rawHeader
	off := 0
	for {
		if off%4 != 0 {
			t.Fatalf("header at offset %d is not 4-aligned", off)
		}
		if off+110 > len(data) {
			t.Fatalf("archive ends at %d without a trailer", len(data))
		}
		h := data[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic %q at offset %d", h[:6], off)
		}
		var r rawHeader
		for i := range r.fields {
			s := string(h[6+8*i : 6+8*(i+1)])
			if strings.ToUpper(s) != s {
				t.Errorf("field %d %q is not upper-case hex", i, s)
			}
			v, err := strconv.ParseUint(s, 16, 32)
			if err != nil {
				t.Fatalf("field %d %q at offset %d: %v", i, s, off, err)
			}
			r.fields[i] = v
		}
		r.rmajor, r.rminor = uint32(r.fields[9]), uint32(r.fields[10])
		namesize := int(r.fields[11])
		filesize := int(r.fields[6])
		if r.fields[12] != 0 {
			t.Errorf("check field is %d, want 0 for newc", r.fields[12])
		}
		nameEnd := off + 110 + namesize
		if namesize < 1 || nameEnd > len(data) || data[nameEnd-1] != 0 {
			t.Fatalf("bad name of size %d at offset %d", namesize, off)
		}
		r.name = string(data[off+110 : nameEnd-1])
		dataStart := align4(nameEnd)
		if !allZero(data[nameEnd:dataStart]) {
			t.Errorf("%s: non-zero name padding", r.name)
		}
		next := align4(dataStart + filesize)
		if next > len(data) {
			t.Fatalf("%s: data runs past the end", r.name)
		}
		if !allZero(data[dataStart+filesize : next]) {
			t.Errorf("%s: non-zero data padding", r.name)
		}
		off = next
		if r.name == "TRAILER!!!" {
			return out
		}
		out = append(out, r)
	}
}

func align4(n int) int { return (n + 3) &^ 3 }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func TestCPIOWriter(t *testing.T) {
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	steps := []error{
		w.Dir("dev", 0o755),
		w.Dir("/usr/local/", 0o700), // cleaned to usr/local
		w.File("usr/local/hello", 0o755, strings.NewReader("hi there"), 8),
		w.File("empty", 0o644, strings.NewReader(""), 0),
		w.File("odd", 0o600, strings.NewReader("12345"), 5),
		// A reader longer than size: only size bytes are taken.
		w.File("cut", 0o644, strings.NewReader("abcdefgh"), 3),
		w.Symlink("bin/sh", "/usr/local/hello"),
		w.CharDev("dev/console", 0o600, 5, 1),
		w.CharDev("dev/big", 0o660, 254, 65535),
		w.Close(),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	data := buf.Bytes()
	if len(data)%512 != 0 {
		t.Errorf("archive is %d bytes, not a multiple of 512", len(data))
	}
	const (
		dir  = cpio.TypeDir
		reg  = cpio.TypeReg
		link = cpio.TypeSymlink
		chr  = cpio.TypeChar
	)
	want := []entry{
		{Name: "dev", Mode: dir | 0o755, Links: 2},
		{Name: "usr/local", Mode: dir | 0o700, Links: 2},
		{Name: "usr/local/hello", Mode: reg | 0o755, Size: 8, Data: []byte("hi there"), Links: 1},
		{Name: "empty", Mode: reg | 0o644, Links: 1},
		{Name: "odd", Mode: reg | 0o600, Size: 5, Data: []byte("12345"), Links: 1},
		{Name: "cut", Mode: reg | 0o644, Size: 3, Data: []byte("abc"), Links: 1},
		{Name: "bin/sh", Mode: link | 0o777, Linkname: "/usr/local/hello", Links: 1},
		{Name: "dev/console", Mode: chr | 0o600, Links: 1, RMajor: 5, RMinor: 1},
		{Name: "dev/big", Mode: chr | 0o660, Links: 1, RMajor: 254, RMinor: 65535},
	}
	got := readArchive(t, data)
	if len(got) != len(want) {
		t.Fatalf("read %d entries, want %d: %+v", len(got), len(want), got)
	}
	inodes := map[int64]string{}
	for i, g := range got {
		w := want[i]
		if g.Name != w.Name || g.Mode != w.Mode || g.Size != w.Size || g.Linkname != w.Linkname ||
			!bytes.Equal(g.Data, w.Data) || g.Links != w.Links || g.RMajor != w.RMajor || g.RMinor != w.RMinor {
			t.Errorf("entry %d =\n %+v\nwant\n %+v", i, g, w)
		}
		// The kernel links entries with equal inode and nlink>1 as hard
		// links, so inodes must be distinct.
		if other, dup := inodes[g.Inode]; dup {
			t.Errorf("%s and %s share inode %d", g.Name, other, g.Inode)
		}
		inodes[g.Inode] = g.Name
	}
}

func TestCPIOEmptyArchive(t *testing.T) {
	var buf bytes.Buffer
	if err := newCPIOWriter(&buf).Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 512 {
		t.Errorf("empty archive is %d bytes, want 512", buf.Len())
	}
	if got := readArchive(t, buf.Bytes()); len(got) != 0 {
		t.Errorf("empty archive has entries %+v", got)
	}
}

func TestCPIOShortReader(t *testing.T) {
	var buf bytes.Buffer
	err := newCPIOWriter(&buf).File("f", 0o644, strings.NewReader("abc"), 10)
	if err == nil || !strings.Contains(err.Error(), "got 3 bytes, want 10") {
		t.Errorf("File with a short reader = %v, want a size error", err)
	}
}

type failAfter struct {
	n   int
	err error
}

func (f *failAfter) Write(b []byte) (int, error) {
	if f.n < len(b) {
		return 0, f.err
	}
	f.n -= len(b)
	return len(b), nil
}

func TestCPIOWriteErrors(t *testing.T) {
	boom := errors.New("boom")
	ops := map[string]func(w *cpioWriter) error{
		"dir":     func(w *cpioWriter) error { return w.Dir("d", 0o755) },
		"file":    func(w *cpioWriter) error { return w.File("f", 0o644, strings.NewReader("data"), 4) },
		"symlink": func(w *cpioWriter) error { return w.Symlink("l", "target") },
		"chardev": func(w *cpioWriter) error { return w.CharDev("c", 0o600, 1, 3) },
		"close":   func(w *cpioWriter) error { return w.Close() },
	}
	for name, op := range ops {
		// Fail on the first write, and on one after the header.
		for _, n := range []int{0, 110} {
			t.Run(name+"/after "+strconv.Itoa(n), func(t *testing.T) {
				if err := op(newCPIOWriter(&failAfter{n: n, err: boom})); !errors.Is(err, boom) {
					t.Errorf("got %v, want %v", err, boom)
				}
			})
		}
	}
}

package kernel

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// The initramfs is a "newc" cpio archive, the format the kernel unpacks.
// kiln writes it itself: the format is a fixed 110-byte ASCII header per
// entry, and the cpio libraries at hand cannot write device numbers, which
// /dev/console needs.

// Entry types, as in the st_mode type bits.
const (
	modeDir     = 0o040000
	modeReg     = 0o100000
	modeSymlink = 0o120000
	modeChar    = 0o020000
)

// cpioWriter writes a newc archive. It is not safe for concurrent use.
type cpioWriter struct {
	w     io.Writer
	n     int64 // bytes written, for alignment
	inode int64
}

func newCPIOWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w, inode: 1} }

func (c *cpioWriter) write(b []byte) error {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

// header writes one entry header. name must be relative ("dev/console").
func (c *cpioWriter) header(name string, mode uint32, uid, gid uint32, size int64, rmajor, rminor uint32) error {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" {
		name = "."
	}
	nlink := 1
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	c.inode++
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.inode, mode, uid, gid, nlink, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	if err := c.write([]byte(h)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	return c.pad()
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm uint32) error {
	return c.header(name, modeDir|perm, 0, 0, 0, 0, 0)
}

// File adds a regular file with the given content.
func (c *cpioWriter) File(name string, perm uint32, r io.Reader, size int64) error {
	if err := c.header(name, modeReg|perm, 0, 0, size, 0, 0); err != nil {
		return err
	}
	n, err := io.Copy(writerFunc(c.write), io.LimitReader(r, size))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("writing %s: got %d bytes, want %d", name, n, size)
	}
	return c.pad()
}

// Symlink adds a symbolic link.
func (c *cpioWriter) Symlink(name, target string) error {
	if err := c.header(name, modeSymlink|0o777, 0, 0, int64(len(target)), 0, 0); err != nil {
		return err
	}
	if err := c.write([]byte(target)); err != nil {
		return err
	}
	return c.pad()
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) error {
	return c.header(name, modeChar|perm, 0, 0, 0, major, minor)
}

// Close writes the trailer and pads the archive to 512 bytes, so that
// archives can be concatenated (the kernel unpacks each in turn).
func (c *cpioWriter) Close() error {
	if err := c.header("TRAILER!!!", 0, 0, 0, 0, 0, 0); err != nil {
		return err
	}
	if r := c.n % 512; r != 0 {
		return c.write(make([]byte, 512-r))
	}
	return nil
}

type writerFunc func([]byte) error

func (f writerFunc) Write(b []byte) (int, error) {
	if err := f(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

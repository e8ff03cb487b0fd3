//go:build linux

package main

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"kiln.dev/kiln/internal/agent"
)

// copyOut sends path as a tar stream whose entries are named after path's
// last element, as docker's cp reads from a container.
func copyOut(ch *agent.Channel, path string) {
	path = filepath.Clean("/" + path)
	if _, err := os.Lstat(path); err != nil {
		_ = ch.SendJSON(agent.FrameReply, agent.Reply{Error: fmt.Sprintf("no such file or directory in the VM: %s", path)})
		return
	}
	if ch.SendJSON(agent.FrameReply, agent.Reply{}) != nil {
		return
	}
	bw := bufio.NewWriterSize(ch.Writer(agent.FrameStdout), agent.MaxPayload)
	tw := tar.NewWriter(bw)
	err := writeTree(tw, path, filepath.Base(path))
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	st := agent.ExitStatus{}
	if err != nil {
		st = agent.ExitStatus{ExitCode: 1, Error: err.Error()}
	}
	_ = ch.SendJSON(agent.FrameExit, st)
}

// writeTree writes root and, for a directory, everything under it, with
// names under name.
func writeTree(tw *tar.Writer, root, name string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		h.Name = filepath.ToSlash(filepath.Join(name, rel))
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uname, h.Gname = "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
}

// copyIn extracts the tar stream the host sends, as docker's cp writes
// into a container: into dest when it is a directory; otherwise into its
// parent directory, the stream's top-level entry taking dest's name.
func copyIn(ch *agent.Channel, raw string) {
	dest := filepath.Clean("/" + raw)
	dir, rename := dest, ""
	if st, err := os.Stat(dest); err != nil || !st.IsDir() {
		dir, rename = filepath.Dir(dest), filepath.Base(dest)
		st, err := os.Stat(dir)
		if strings.HasSuffix(raw, "/") || err != nil || !st.IsDir() {
			if !strings.HasSuffix(raw, "/") {
				dest = dir
			}
			_ = ch.SendJSON(agent.FrameReply, agent.Reply{Error: fmt.Sprintf("cannot copy to %s: no such directory in the VM: %s", raw, dest)})
			return
		}
	}
	if ch.SendJSON(agent.FrameReply, agent.Reply{}) != nil {
		return
	}
	r := &chanReader{ch: ch}
	err := extract(tar.NewReader(r), dir, rename)
	if err == nil {
		_, err = io.Copy(io.Discard, r) // the rest, to the host's EOF
	}
	st := agent.ExitStatus{}
	if err != nil {
		st = agent.ExitStatus{ExitCode: 1, Error: err.Error()}
	}
	_ = ch.SendJSON(agent.FrameExit, st)
}

func extract(tr *tar.Reader, dir, rename string) error {
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		name := filepath.Clean("/" + h.Name)[1:]
		if name == "" {
			continue
		}
		if rename != "" {
			_, rest, _ := strings.Cut(name, "/")
			name = filepath.Join(rename, rest)
		}
		p := filepath.Join(dir, name)
		mode := fs.FileMode(h.Mode) & fs.ModePerm
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, mode); err != nil {
				return err
			}
			_ = os.Chmod(p, mode)
		case tar.TypeReg:
			os.Remove(p)
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("writing %s: %w", p, err)
			}
		case tar.TypeSymlink:
			os.Remove(p)
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		case tar.TypeLink:
			target := filepath.Join(dir, filepath.Clean("/" + h.Linkname)[1:])
			os.Remove(p)
			if err := os.Link(target, p); err != nil {
				return err
			}
		default:
			continue
		}
	}
}

// chanReader reads a channel's stdin frames up to the host's EOF.
type chanReader struct {
	ch  *agent.Channel
	buf []byte
	eof bool
}

func (r *chanReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		f, err := r.ch.Recv()
		if err != nil {
			return 0, err
		}
		switch f.Type {
		case agent.FrameStdin:
			r.buf = f.Payload
		case agent.FrameEOF:
			r.eof = true
		case agent.FrameClose:
			return 0, errors.New("the host abandoned the copy")
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

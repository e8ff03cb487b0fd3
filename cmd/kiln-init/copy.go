//go:build linux

package main

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/tartree"
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
	err := tartree.Write(tw, path, filepath.Base(path), true)
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
	err := tartree.Extract(tar.NewReader(r), dir, "", rename)
	if err == nil {
		_, err = io.Copy(io.Discard, r) // the rest, to the host's EOF
	}
	st := agent.ExitStatus{}
	if err != nil {
		st = agent.ExitStatus{ExitCode: 1, Error: err.Error()}
	}
	_ = ch.SendJSON(agent.FrameExit, st)
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

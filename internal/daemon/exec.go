package daemon

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/vm"
)

// StreamProtocol is the Upgrade token of an exec stream.
const StreamProtocol = "kiln-stream"

// exec runs a command in a running VM. Errors found before the command
// runs are ordinary JSON errors; then the connection is upgraded (101) and
// carries agent frames on channel 0: stdin, EOF and control (ExecControl)
// from the client, stdout, stderr and one exit (ExecExit) from the daemon.
// A command that cannot run (126, 127) is reported by that exit frame.
// The daemon reads the client only as fast as the guest takes stdin and
// reads the guest only as fast as the client takes output, so a fast
// stream holds no more than a window in the daemon.
func (d *Daemon) exec(w http.ResponseWriter, r *http.Request) error {
	var c api.ExecConfig
	if err := decode(w, r, &c); err != nil {
		return err
	}
	if len(c.Cmd) == 0 || c.Cmd[0] == "" {
		return errdefs.Invalid("exec needs a command")
	}
	v, err := d.sup.Running(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	sess, err := v.Exec(agent.ExecRequest{Args: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User,
		TTY: c.Tty, Rows: c.Rows, Cols: c.Cols, Stdin: c.Stdin})
	var ee *vm.ExecError
	if err != nil && !errors.As(err, &ee) {
		return errdefs.Mark(err, errdefs.ErrConflict)
	}
	conn, rw, err := upgrade(w)
	if err != nil {
		if sess != nil {
			sess.Close()
		}
		d.log.Warn("exec: upgrading the connection", "err", err)
		return nil
	}
	defer conn.Close()
	out := &frameWriter{w: conn}
	if ee != nil {
		out.json(agent.FrameExit, api.ExecExit{ExitCode: ee.Code, Error: ee.Msg})
		return nil
	}
	defer sess.Close()
	go func() {
		// From the client. A client gone before the exit abandons the
		// session: the guest kills the command.
		for {
			f, err := agent.ReadFrame(rw)
			if err != nil {
				sess.Close()
				return
			}
			switch f.Type {
			case agent.FrameStdin:
				if _, err := sess.Write(f.Payload); err != nil {
					return
				}
			case agent.FrameEOF:
				_ = sess.CloseInput()
			case agent.FrameControl:
				var ctl api.ExecControl
				if json.Unmarshal(f.Payload, &ctl) == nil {
					_ = sess.Control(agent.Control{Rows: ctl.Rows, Cols: ctl.Cols, Signal: ctl.Signal})
				}
			}
		}
	}()
	for {
		f, err := sess.Recv()
		if err != nil {
			out.json(agent.FrameExit, api.ExecExit{ExitCode: 125, Error: err.Error()})
			return nil
		}
		switch f.Type {
		case agent.FrameStdout, agent.FrameStderr:
			if out.frame(agent.Frame{Type: f.Type, Payload: f.Payload}) != nil {
				return nil
			}
		case agent.FrameExit:
			e, err := vm.ParseExit(f)
			x := api.ExecExit{ExitCode: e.ExitCode, Error: e.Error}
			if err != nil {
				x = api.ExecExit{ExitCode: 125, Error: err.Error()}
			}
			out.json(agent.FrameExit, x)
			return nil
		}
	}
}

// upgrade takes over the connection and answers 101.
func upgrade(w http.ResponseWriter) (net.Conn, *bufio.Reader, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the connection cannot be taken over")
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", StreamProtocol)
	if err := rw.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, rw.Reader, nil
}

type frameWriter struct{ w io.Writer }

func (fw *frameWriter) frame(f agent.Frame) error {
	_, err := fw.w.Write(agent.AppendFrame(nil, f))
	return err
}

func (fw *frameWriter) json(t byte, v any) {
	b, _ := json.Marshal(v)
	_ = fw.frame(agent.Frame{Type: t, Payload: b})
}

// archiveGet streams a path of a running VM as a tar archive, as docker's
// GET /containers/{id}/archive.
func (d *Daemon) archiveGet(w http.ResponseWriter, r *http.Request) error {
	p := r.URL.Query().Get("path")
	if p == "" {
		return errdefs.Invalid("archive needs a path")
	}
	v, err := d.sup.Running(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	sess, err := v.CopyOut(p)
	if err != nil {
		return err
	}
	defer sess.Close()
	w.Header().Set("Content-Type", "application/x-tar")
	w.WriteHeader(http.StatusOK)
	for {
		f, err := sess.Recv()
		if err != nil {
			panic(http.ErrAbortHandler) // the client sees a cut stream, not a short archive
		}
		switch f.Type {
		case agent.FrameStdout:
			if _, err := w.Write(f.Payload); err != nil {
				return nil
			}
		case agent.FrameExit:
			if e, err := vm.ParseExit(f); err != nil || e.Error != "" {
				d.log.Warn("copying out of a VM", "vm", v.ID, "path", p, "err", e.Error)
				panic(http.ErrAbortHandler)
			}
			return nil
		}
	}
}

// archivePut extracts the tar archive in the body into a path of a
// running VM, as docker's PUT /containers/{id}/archive.
func (d *Daemon) archivePut(w http.ResponseWriter, r *http.Request) error {
	p := r.URL.Query().Get("path")
	if p == "" {
		return errdefs.Invalid("archive needs a path")
	}
	v, err := d.sup.Running(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	sess, err := v.CopyIn(p)
	if err != nil {
		return err
	}
	defer sess.Close()
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(sess, r.Body)
		if err == nil {
			err = sess.CloseInput()
		}
		copied <- err
	}()
	for {
		f, err := sess.Recv()
		if err != nil {
			return err
		}
		if f.Type != agent.FrameExit {
			continue
		}
		e, err := vm.ParseExit(f)
		if err == nil && e.Error != "" {
			err = fmt.Errorf("copying into VM %s: %s", v.Name, e.Error)
		}
		if err != nil {
			return err
		}
		if err := <-copied; err != nil {
			return fmt.Errorf("copying into VM %s: %w", v.Name, err)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

// stats answers a running VM's memory and load, from its guest agent.
func (d *Daemon) stats(w http.ResponseWriter, r *http.Request) error {
	v, err := d.sup.Running(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	st, err := v.Stats()
	if err != nil {
		return errdefs.Mark(err, errdefs.ErrConflict)
	}
	writeJSON(w, http.StatusOK, api.Stats{MemTotal: st.MemTotal, MemAvailable: st.MemAvailable, Load: st.Load, Uptime: st.Uptime, Processes: st.Processes})
	return nil
}

// top lists a running VM's processes, from its guest agent. The guest
// chooses what its processes are called: control characters (a
// terminal's escape sequences) are replaced before anyone prints them.
func (d *Daemon) top(w http.ResponseWriter, r *http.Request) error {
	v, err := d.sup.Running(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	procs, truncated, err := v.Top()
	if err != nil {
		return errdefs.Mark(err, errdefs.ErrConflict)
	}
	out := api.Top{Processes: []api.Process{}, Truncated: truncated}
	for _, p := range procs {
		out.Processes = append(out.Processes, api.Process{
			PID: p.PID, PPID: p.PPID, UID: p.UID, State: printable(p.State, 4), CPUSeconds: p.CPUSeconds,
			RSSBytes: p.RSSBytes, Cmd: printable(p.Cmd, agent.MaxCmd),
		})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// printable is s, at most max bytes, with control characters and
// invalid UTF-8 replaced by '?'.
func printable(s string, max int) string {
	if len(s) > max {
		s = s[:max]
	}
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/agent"
)

// ExecStream is a command running in a VM (Exec).
type ExecStream struct {
	rwc io.ReadWriteCloser
	r   *bufio.Reader
	wmu sync.Mutex
}

// Exec starts a command in a running VM and returns its stream. Errors
// found before the command runs (no such VM, a VM not running) are
// returned here; a command that cannot run ends its stream with exit
// code 126 or 127.
func (c *Client) Exec(ctx context.Context, ref string, cfg api.ExecConfig) (*ExecStream, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encoding request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://kiln/"+api.Version+vmPath(ref, "/exec"), bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("making request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "kiln-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && ctx.Err() == nil {
			return nil, fmt.Errorf("%w at %s: %w", ErrNoDaemon, c.socket, ue.Err)
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		return nil, errorOf(resp)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, errors.New("the daemon's exec stream is not writable")
	}
	return &ExecStream{rwc: rwc, r: bufio.NewReaderSize(rwc, 64<<10)}, nil
}

func errorOf(resp *http.Response) error {
	var e api.Error
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(b, &e) != nil || e.Message == "" {
		e.Message = fmt.Sprintf("daemon answered %s", resp.Status)
	}
	return &Error{Status: resp.StatusCode, Message: e.Message}
}

func (s *ExecStream) send(t byte, payload []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := s.rwc.Write(agent.AppendFrame(nil, agent.Frame{Type: t, Payload: payload}))
	return err
}

// Resize sets the command's tty size.
func (s *ExecStream) Resize(rows, cols uint16) error {
	b, _ := json.Marshal(api.ExecControl{Rows: rows, Cols: cols})
	return s.send(agent.FrameControl, b)
}

// Signal sends the command a signal.
func (s *ExecStream) Signal(sig int) error {
	b, _ := json.Marshal(api.ExecControl{Signal: sig})
	return s.send(agent.FrameControl, b)
}

// Close ends the stream; a command still running is killed.
func (s *ExecStream) Close() error { return s.rwc.Close() }

// Stream copies stdin (if not nil) to the command, its output to stdout
// and stderr, and returns how it ended. A lost connection is an error.
func (s *ExecStream) Stream(stdin io.Reader, stdout, stderr io.Writer) (api.ExecExit, error) {
	if stdin != nil {
		go func() {
			buf := make([]byte, agent.MaxPayload)
			for {
				n, err := stdin.Read(buf)
				if n > 0 && s.send(agent.FrameStdin, buf[:n]) != nil {
					return
				}
				if err != nil {
					_ = s.send(agent.FrameEOF, nil)
					return
				}
			}
		}()
	}
	for {
		f, err := agent.ReadFrame(s.r)
		if err != nil {
			return api.ExecExit{}, fmt.Errorf("exec stream ended before the command did: %w", err)
		}
		switch f.Type {
		case agent.FrameStdout:
			if _, err := stdout.Write(f.Payload); err != nil {
				return api.ExecExit{}, err
			}
		case agent.FrameStderr:
			if _, err := stderr.Write(f.Payload); err != nil {
				return api.ExecExit{}, err
			}
		case agent.FrameExit:
			var e api.ExecExit
			if err := json.Unmarshal(f.Payload, &e); err != nil {
				return e, fmt.Errorf("malformed exit from the daemon: %w", err)
			}
			return e, nil
		}
	}
}

// CopyFrom returns path in a running VM as a tar archive, as docker's
// GET /containers/{id}/archive; the caller closes it.
func (c *Client) CopyFrom(ctx context.Context, ref, path string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, http.MethodGet, vmPath(ref, "/archive"), url.Values{"path": {path}}, nil, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// CopyTo extracts the tar archive into path in a running VM: into it when
// it is a directory, otherwise as it (the archive's top entry renamed).
func (c *Client) CopyTo(ctx context.Context, ref, path string, archive io.Reader) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://kiln/"+api.Version+vmPath(ref, "/archive")+"?"+url.Values{"path": {path}}.Encode(), archive)
	if err != nil {
		return fmt.Errorf("making request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return errorOf(resp)
	}
	return nil
}

// Stats returns a running VM's memory and load.
func (c *Client) Stats(ctx context.Context, ref string) (api.Stats, error) {
	var s api.Stats
	err := c.call(ctx, http.MethodGet, vmPath(ref, "/stats"), nil, nil, &s)
	return s, err
}

// Top lists a running VM's processes.
func (c *Client) Top(ctx context.Context, ref string) (api.Top, error) {
	var t api.Top
	err := c.call(ctx, http.MethodGet, vmPath(ref, "/top"), nil, nil, &t)
	return t, err
}

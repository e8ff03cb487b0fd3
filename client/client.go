// Package client is the Go client of the kiln daemon's API (package api):
// what the kiln CLI uses, and what a program that drives containers today can
// drive kiln VMs with (Run, Stop, Remove, Inspect, List, Logs, Wait).
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/unixsock"
)

// Client talks to the daemon of one kiln root over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// New returns a client for the daemon listening on socket.
func New(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var c net.Conn
			err := unixsock.WithPath(socket, func(p string) error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, "unix", p)
				return err
			})
			return c, err
		},
		DisableCompression: true,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Error is an error answered by the daemon. It unwraps to the sentinel of
// its status code (errdefs.ErrNotFound for 404, …).
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap maps the status code back to kiln's sentinel errors.
func (e *Error) Unwrap() error {
	switch e.Status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return errdefs.ErrInvalidArgument
	case http.StatusNotFound:
		return errdefs.ErrNotFound
	case http.StatusConflict:
		return errdefs.ErrConflict
	case http.StatusServiceUnavailable:
		return errdefs.ErrUnavailable
	}
	return nil
}

// ErrNoDaemon wraps failures to reach the daemon at all.
var ErrNoDaemon = errors.New("no kiln daemon answers")

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) (*http.Response, error) {
	var rd io.Reader
	contentType := "application/json"
	if raw, ok := body.(rawBody); ok {
		rd, contentType = raw.r, raw.contentType
	} else if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encoding request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	u := "http://kiln/" + api.Version + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("making request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && ctx.Err() == nil {
			return nil, fmt.Errorf("%w at %s: %w", ErrNoDaemon, c.socket, ue.Err)
		}
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e api.Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("daemon answered %s", resp.Status)
		}
		return nil, &Error{Status: resp.StatusCode, Message: e.Message}
	}
	if out != nil {
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return nil, fmt.Errorf("decoding response: %w", err)
		}
		return resp, nil
	}
	return resp, nil
}

func (c *Client) call(ctx context.Context, method, path string, q url.Values, body, out any) error {
	resp, err := c.do(ctx, method, path, q, body, out)
	if err == nil && out == nil {
		resp.Body.Close()
	}
	return err
}

// Ping checks that the daemon answers.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, http.MethodGet, "/ping", nil, nil, nil)
}

// Info describes the daemon.
func (c *Client) Info(ctx context.Context) (api.Info, error) {
	var i api.Info
	err := c.call(ctx, http.MethodGet, "/info", nil, nil, &i)
	return i, err
}

// Create creates a VM without starting it.
func (c *Client) Create(ctx context.Context, cfg api.VMConfig) (api.CreateResponse, error) {
	var r api.CreateResponse
	err := c.call(ctx, http.MethodPost, "/vms", nil, cfg, &r)
	return r, err
}

// Run creates and starts a VM, as `kiln run -d` does. A VM that fails to
// start is removed again.
func (c *Client) Run(ctx context.Context, cfg api.VMConfig) (api.CreateResponse, error) {
	r, err := c.Create(ctx, cfg)
	if err != nil {
		return r, err
	}
	if err := c.Start(ctx, r.ID); err != nil {
		_ = c.Remove(context.WithoutCancel(ctx), r.ID, RemoveOptions{Force: true, Volumes: true})
		return r, err
	}
	return r, nil
}

func vmPath(ref, rest string) string { return "/vms/" + url.PathEscape(ref) + rest }

// Start starts a VM.
func (c *Client) Start(ctx context.Context, ref string) error {
	return c.StartFrom(ctx, ref, "")
}

// StartFrom starts a VM from its checkpoint, or boots it when checkpoint
// is "".
func (c *Client) StartFrom(ctx context.Context, ref, checkpoint string) error {
	var q url.Values
	if checkpoint != "" {
		q = url.Values{"checkpoint": {checkpoint}}
	}
	return c.call(ctx, http.MethodPost, vmPath(ref, "/start"), q, nil, nil)
}

func graceQuery(grace *time.Duration) url.Values {
	if grace == nil {
		return nil
	}
	return url.Values{"t": {strconv.Itoa(int(*grace / time.Second))}}
}

// Stop stops a VM gracefully; grace nil means the VM's own stop timeout.
func (c *Client) Stop(ctx context.Context, ref string, grace *time.Duration) error {
	return c.call(ctx, http.MethodPost, vmPath(ref, "/stop"), graceQuery(grace), nil, nil)
}

// Restart stops and starts a VM.
func (c *Client) Restart(ctx context.Context, ref string, grace *time.Duration) error {
	return c.call(ctx, http.MethodPost, vmPath(ref, "/restart"), graceQuery(grace), nil, nil)
}

// Kill sends a signal (a name like "HUP" or a number) to the VM's program.
func (c *Client) Kill(ctx context.Context, ref, signal string) error {
	return c.call(ctx, http.MethodPost, vmPath(ref, "/kill"), url.Values{"signal": {signal}}, nil, nil)
}

// Pause freezes a running VM's guest; Unpause lets it run again.
func (c *Client) Pause(ctx context.Context, ref string) error {
	return c.call(ctx, http.MethodPost, vmPath(ref, "/pause"), nil, nil, nil)
}

// Unpause lets a paused VM's guest run again.
func (c *Client) Unpause(ctx context.Context, ref string) error {
	return c.call(ctx, http.MethodPost, vmPath(ref, "/unpause"), nil, nil, nil)
}

// Rename gives a VM another name, as docker rename does.
func (c *Client) Rename(ctx context.Context, ref, name string) error {
	return c.call(ctx, http.MethodPost, vmPath(ref, "/rename"), url.Values{"name": {name}}, nil, nil)
}

// RemoveOptions are the choices of Remove.
type RemoveOptions struct {
	// Force kills a running VM first; without it a running VM is refused.
	Force bool
	// Volumes removes the VM's anonymous volumes too (docker's rm -v).
	Volumes bool
}

// Remove removes a VM.
func (c *Client) Remove(ctx context.Context, ref string, o RemoveOptions) error {
	q := url.Values{}
	if o.Force {
		q.Set("force", "1")
	}
	if o.Volumes {
		q.Set("v", "1")
	}
	return c.call(ctx, http.MethodDelete, vmPath(ref, ""), q, nil, nil)
}

// Inspect returns one VM.
func (c *Client) Inspect(ctx context.Context, ref string) (api.VM, error) {
	var v api.VM
	err := c.call(ctx, http.MethodGet, vmPath(ref, ""), nil, nil, &v)
	return v, err
}

// List returns every VM.
func (c *Client) List(ctx context.Context) ([]api.VM, error) {
	var vs []api.VM
	err := c.call(ctx, http.MethodGet, "/vms", nil, nil, &vs)
	return vs, err
}

// Wait waits for the VM's run to end and returns its exit code. With next,
// it waits for the end of the next run when the VM is not running (so a
// wait registered before Start sees that run end, even with auto-remove).
// registered is called once the daemon has taken the wait.
func (c *Client) Wait(ctx context.Context, ref string, next bool, registered func()) (api.WaitResponse, error) {
	q := url.Values{}
	if next {
		q.Set("condition", "next-exit")
	}
	var w api.WaitResponse
	resp, err := c.do(ctx, http.MethodPost, vmPath(ref, "/wait"), q, nil, nil)
	if err != nil {
		return w, err
	}
	defer resp.Body.Close()
	if registered != nil {
		registered()
	}
	if err := json.NewDecoder(resp.Body).Decode(&w); err != nil {
		return w, fmt.Errorf("waiting for VM %s: %w", ref, err)
	}
	return w, nil
}

// LogOptions select log lines.
type LogOptions struct {
	Follow  bool
	Tail    int    // < 0: all
	Since   string // a duration ago, Unix seconds or RFC 3339
	Until   string
	Console bool // the serial console instead of the program's output
}

// Logs streams a VM's output to fn, one entry at a time, until the stored
// lines are done (or, with Follow, until the VM ends for good). With
// Console, fn gets the console text as one entry.
func (c *Client) Logs(ctx context.Context, ref string, o LogOptions, fn func(api.LogEntry) error) error {
	q := url.Values{}
	if o.Follow {
		q.Set("follow", "1")
	}
	if o.Tail >= 0 {
		q.Set("tail", strconv.Itoa(o.Tail))
	}
	if o.Since != "" {
		q.Set("since", o.Since)
	}
	if o.Until != "" {
		q.Set("until", o.Until)
	}
	if o.Console {
		q.Set("console", "1")
	}
	resp, err := c.do(ctx, http.MethodGet, vmPath(ref, "/logs"), q, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if o.Console {
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return fmt.Errorf("reading console: %w", err)
		}
		return fn(api.LogEntry{Stream: "console", Line: string(b)})
	}
	return decodeStream(resp.Body, func(e *api.LogEntry) error { return fn(*e) })
}

// Events streams events to fn: those since (if set), then live ones until
// ctx is done (or up to until, if set).
func (c *Client) Events(ctx context.Context, since, until string, fn func(api.Event) error) error {
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	if until != "" {
		q.Set("until", until)
	}
	resp, err := c.do(ctx, http.MethodGet, "/events", q, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decodeStream(resp.Body, func(e *api.Event) error { return fn(*e) })
}

func decodeStream[T any](r io.Reader, fn func(*T) error) error {
	br := bufio.NewReader(r)
	dec := json.NewDecoder(br)
	for {
		var v T
		if err := dec.Decode(&v); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading stream: %w", err)
		}
		if err := fn(&v); err != nil {
			return err
		}
	}
}

// Sentinel errors a daemon error unwraps to, for errors.Is.
var (
	ErrNotFound        = errdefs.ErrNotFound
	ErrConflict        = errdefs.ErrConflict
	ErrInvalidArgument = errdefs.ErrInvalidArgument
	ErrUnavailable     = errdefs.ErrUnavailable
)

// InspectImage returns a stored image by tag, digest or ID (prefix).
func (c *Client) InspectImage(ctx context.Context, ref string) (api.Image, error) {
	var img api.Image
	err := c.call(ctx, http.MethodGet, "/images/inspect", url.Values{"ref": {ref}}, nil, &img)
	return img, err
}

// ImageExists reports whether the daemon's store holds ref.
func (c *Client) ImageExists(ctx context.Context, ref string) (bool, error) {
	_, err := c.InspectImage(ctx, ref)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Images lists the stored images.
func (c *Client) Images(ctx context.Context) ([]api.Image, error) {
	var imgs []api.Image
	err := c.call(ctx, http.MethodGet, "/images", nil, nil, &imgs)
	return imgs, err
}

// Login stores credentials for a registry, used by later pulls and pushes.
func (c *Client) Login(ctx context.Context, registry, username, password string) error {
	return c.call(ctx, http.MethodPost, "/auth", nil, api.LoginRequest{Registry: registry, Username: username, Password: password}, nil)
}

// DiskUsage returns what the root's images, VMs, volumes and caches take
// on disk.
func (c *Client) DiskUsage(ctx context.Context) (api.DiskUsage, error) {
	var u api.DiskUsage
	err := c.call(ctx, http.MethodGet, "/system/df", nil, nil, &u)
	return u, err
}

// Update changes a VM's restart policy (at once) and its memory and CPUs
// (from its next start), and returns the daemon's warnings.
func (c *Client) Update(ctx context.Context, ref string, u api.VMUpdate) ([]string, error) {
	var r api.UpdateResponse
	err := c.call(ctx, http.MethodPost, vmPath(ref, "/update"), nil, u, &r)
	return r.Warnings, err
}

package agent

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// ErrOldGuest is wrapped when the guest does not speak ControlVersion.
var ErrOldGuest = errors.New("the guest agent speaks another protocol version")

// ErrNoReply is returned when the guest agent does not answer a request
// within the client's reply deadline: a hung or hostile guest never holds
// a host caller.
var ErrNoReply = errors.New("the guest agent did not reply in time")

// DefaultReplyTimeout bounds the wait for the guest's Reply to a request
// (the Reply only: an exec's output and exit may take as long as the
// command does).
const DefaultReplyTimeout = 10 * time.Second

// Client is the host's end of a guest's control port.
type Client struct {
	conn net.Conn
	mux  *Mux

	mu   sync.Mutex
	next uint32
	// ReplyTimeout bounds the wait for each Reply; 0 means
	// DefaultReplyTimeout. Set before the first request.
	ReplyTimeout time.Duration
}

// NewClient greets the guest on conn (Magic and Hello, waiting up to
// timeout for its Hello) and returns a client that owns conn. A guest that
// does not answer, or answers with another version, is an error wrapping
// ErrOldGuest.
func NewClient(conn net.Conn, timeout time.Duration) (*Client, error) {
	hello, _ := json.Marshal(Hello{Version: ControlVersion, Agent: "kiln"})
	b := AppendFrame(append([]byte(nil), Magic...), Frame{Type: FrameHello, Payload: hello})
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(b); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting the guest agent: %w", err)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	err := SkipToMagic(r)
	var f Frame
	if err == nil {
		f, err = ReadFrame(r)
	}
	if err != nil {
		conn.Close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("%w: no answer to a version %d hello within %s (a kiln-init from before version %d, which only stops and signals): restart the VM to use this: %w",
				ErrOldGuest, ControlVersion, timeout, ControlVersion, err)
		}
		return nil, fmt.Errorf("greeting the guest agent: %w", err)
	}
	var h Hello
	if f.Type != FrameHello || json.Unmarshal(f.Payload, &h) != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: the guest answered the hello with a frame of type %d", ErrFrame, f.Type)
	}
	if h.Version != ControlVersion {
		conn.Close()
		return nil, fmt.Errorf("%w: the guest speaks version %d, this kiln %d: restart the VM", ErrOldGuest, h.Version, ControlVersion)
	}
	_ = conn.SetDeadline(time.Time{})
	var seed [4]byte
	_, _ = rand.Read(seed[:])
	c := &Client{conn: conn, mux: NewMux(r, conn, nil), next: binary.BigEndian.Uint32(seed[:]) | 1}
	go func() {
		_ = c.mux.Run()
		conn.Close()
	}()
	return c, nil
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.mux.Done() }

// Err says why the connection ended (nil while it is up).
func (c *Client) Err() error { return c.mux.Err() }

// Close ends the connection and every session on it.
func (c *Client) Close() error {
	c.mux.Fail(fmt.Errorf("%w: closed by the host", ErrClosed))
	return c.conn.Close()
}

// Open sends req on a new channel and waits for the guest's Reply. A Reply
// with an error is returned with the channel closed.
func (c *Client) Open(req OpenRequest) (*Channel, *Reply, error) {
	c.mu.Lock()
	id := c.next
	c.next += 2 // random start, odd ids: stale frames of another connection find no channel
	if c.next == 0 {
		c.next = 1
	}
	c.mu.Unlock()
	ch, err := c.mux.Open(id)
	if err != nil {
		return nil, nil, err
	}
	if err := ch.SendJSON(FrameOpen, req); err != nil {
		ch.Close()
		return nil, nil, err
	}
	timeout := c.ReplyTimeout
	if timeout == 0 {
		timeout = DefaultReplyTimeout
	}
	// A guest that never replies ends the channel, and so the wait.
	deadline := time.AfterFunc(timeout, func() {
		ch.end(fmt.Errorf("%w: no reply to %s within %s", ErrNoReply, req.Op, timeout))
	})
	defer deadline.Stop()
	for {
		f, err := ch.Recv()
		if err != nil {
			ch.Close()
			return nil, nil, fmt.Errorf("waiting for the guest agent's reply to %s: %w", req.Op, err)
		}
		if f.Type != FrameReply {
			continue
		}
		if !deadline.Stop() {
			// The deadline fired as the reply came: the channel is ended.
			ch.Close()
			return nil, nil, fmt.Errorf("%w: reply to %s after %s", ErrNoReply, req.Op, timeout)
		}
		var r Reply
		if err := json.Unmarshal(f.Payload, &r); err != nil {
			ch.Close()
			return nil, nil, fmt.Errorf("%w: reply to %s: %v", ErrFrame, req.Op, err)
		}
		if r.Error != "" {
			ch.Close()
		}
		return ch, &r, nil
	}
}

// Do runs a request answered by a Reply alone (stop, signal, stats).
func (c *Client) Do(req OpenRequest) (*Reply, error) {
	ch, r, err := c.Open(req)
	if err != nil {
		return nil, err
	}
	ch.Close()
	if r.Error != "" {
		return r, errors.New(r.Error)
	}
	return r, nil
}

package agent

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ErrClosed is returned by a Mux or a Channel that has ended.
var ErrClosed = errors.New("agent connection closed")

// Mux carries many channels over one byte stream (the control port). Each
// channel has a window per direction: a sender sends at most as many
// stream bytes as the receiver granted, and the receiver grants more only
// as its reader consumes them, so neither side holds more than Window
// bytes per channel however fast the other writes, and a slow reader
// stalls only its own channel.
type Mux struct {
	r *bufio.Reader
	w io.Writer

	wmu sync.Mutex // serialises writes: one frame per Write

	mu     sync.Mutex
	chans  map[uint32]*Channel
	err    error
	done   chan struct{}
	onOpen func(ch *Channel, req []byte)
}

// NewMux returns a mux over r and w; call Run to read. onOpen, on the
// guest side, is called in its own goroutine for each channel the host
// opens, with the Open payload.
func NewMux(r *bufio.Reader, w io.Writer, onOpen func(ch *Channel, req []byte)) *Mux {
	return &Mux{r: r, w: w, chans: map[uint32]*Channel{}, done: make(chan struct{}), onOpen: onOpen}
}

// Done is closed when the mux has ended; Err then says why.
func (m *Mux) Done() <-chan struct{} { return m.done }

// Err returns why the mux ended, or nil while it runs.
func (m *Mux) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Run reads frames until the stream fails or a peer breaks the protocol,
// then ends every channel with that error and returns it.
func (m *Mux) Run() error {
	for {
		f, err := ReadFrame(m.r)
		if err != nil {
			if err == io.EOF {
				err = fmt.Errorf("%w: the peer hung up", ErrClosed)
			}
			m.Fail(err)
			return err
		}
		if err := m.dispatch(f); err != nil {
			m.Fail(err)
			return err
		}
	}
}

func (m *Mux) dispatch(f Frame) error {
	m.mu.Lock()
	ch := m.chans[f.Channel]
	if f.Type == FrameOpen && m.onOpen != nil {
		if ch != nil {
			m.mu.Unlock()
			return fmt.Errorf("%w: channel %d opened twice", ErrFrame, f.Channel)
		}
		ch = m.newChannelLocked(f.Channel)
		m.mu.Unlock()
		go m.onOpen(ch, f.Payload)
		return nil
	}
	m.mu.Unlock()
	if ch == nil {
		return nil // a channel that ended: late frames are dropped
	}
	if f.Type == FrameWindow {
		if len(f.Payload) != 4 {
			return fmt.Errorf("%w: window frame of %d bytes", ErrFrame, len(f.Payload))
		}
		ch.grant(int(binary.BigEndian.Uint32(f.Payload)))
		return nil
	}
	return ch.push(f)
}

// Fail ends the mux and all its channels with err.
func (m *Mux) Fail(err error) {
	m.mu.Lock()
	if m.err != nil {
		m.mu.Unlock()
		return
	}
	m.err = err
	chans := m.chans
	m.chans = map[uint32]*Channel{}
	close(m.done)
	m.mu.Unlock()
	for _, ch := range chans {
		ch.end(err)
	}
}

// Open makes a channel with the given id (the host picks ids).
func (m *Mux) Open(id uint32) (*Channel, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return nil, m.err
	}
	if m.chans[id] != nil {
		return nil, fmt.Errorf("agent channel %d is in use", id)
	}
	return m.newChannelLocked(id), nil
}

func (m *Mux) newChannelLocked(id uint32) *Channel {
	ch := &Channel{m: m, id: id, credit: Window}
	ch.cond = sync.NewCond(&ch.mu)
	m.chans[id] = ch
	return ch
}

func (m *Mux) forget(id uint32) {
	m.mu.Lock()
	delete(m.chans, id)
	m.mu.Unlock()
}

// WriteFrame writes one frame.
func (m *Mux) WriteFrame(f Frame) error {
	if err := m.Err(); err != nil {
		return err
	}
	b := AppendFrame(make([]byte, 0, HeaderSize+len(f.Payload)), f)
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if _, err := m.w.Write(b); err != nil {
		err = fmt.Errorf("writing to the agent connection: %w", err)
		m.Fail(err)
		return err
	}
	return nil
}

// Channel is one session on a Mux.
type Channel struct {
	m  *Mux
	id uint32

	mu       sync.Mutex
	cond     *sync.Cond
	queue    []Frame
	queued   int // stream bytes in queue
	consumed int // stream bytes read but not yet granted back
	credit   int // stream bytes this side may still send
	err      error
}

// ID returns the channel's number.
func (c *Channel) ID() uint32 { return c.id }

func (c *Channel) push(f Frame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil
	}
	if isData(f.Type) {
		c.queued += len(f.Payload)
		if c.queued+c.consumed > Window {
			return fmt.Errorf("%w: channel %d: the peer sent past its window", ErrFrame, c.id)
		}
	} else if len(c.queue) > 1024 {
		return fmt.Errorf("%w: channel %d: over 1024 frames unread", ErrFrame, c.id)
	}
	c.queue = append(c.queue, f)
	c.cond.Broadcast()
	return nil
}

func (c *Channel) grant(n int) {
	c.mu.Lock()
	c.credit += n
	c.cond.Broadcast()
	c.mu.Unlock()
}

// end makes every pending and later call fail with err, once the queue is
// drained.
func (c *Channel) end(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.cond.Broadcast()
	c.mu.Unlock()
}

// Recv returns the next frame on the channel. Stream bytes it returns are
// granted back to the sender once the caller comes back for more, so a
// caller that handles a frame before its next Recv bounds what is held.
func (c *Channel) Recv() (Frame, error) {
	c.mu.Lock()
	if c.consumed >= Window/4 {
		n := c.consumed
		c.consumed = 0
		c.mu.Unlock()
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(n))
		_ = c.m.WriteFrame(Frame{Channel: c.id, Type: FrameWindow, Payload: b[:]})
		c.mu.Lock()
	}
	for len(c.queue) == 0 && c.err == nil {
		c.cond.Wait()
	}
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		return Frame{}, c.err
	}
	f := c.queue[0]
	c.queue[0] = Frame{}
	c.queue = c.queue[1:]
	if isData(f.Type) {
		c.queued -= len(f.Payload)
		c.consumed += len(f.Payload)
	}
	return f, nil
}

// Send sends a frame of type t; stream data is cut to MaxPayload and
// waits for window.
func (c *Channel) Send(t byte, payload []byte) error {
	if !isData(t) {
		return c.m.WriteFrame(Frame{Channel: c.id, Type: t, Payload: payload})
	}
	for len(payload) > 0 {
		c.mu.Lock()
		for c.credit == 0 && c.err == nil {
			c.cond.Wait()
		}
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			return err
		}
		n := min(len(payload), c.credit, MaxPayload)
		c.credit -= n
		c.mu.Unlock()
		if err := c.m.WriteFrame(Frame{Channel: c.id, Type: t, Payload: payload[:n]}); err != nil {
			return err
		}
		payload = payload[n:]
	}
	return nil
}

// SendJSON sends v as the JSON payload of a frame of type t.
func (c *Channel) SendJSON(t byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %T: %w", v, err)
	}
	return c.Send(t, b)
}

// Close ends the channel on this side: it is forgotten by the mux, and
// pending and later calls fail.
func (c *Channel) Close() {
	c.m.forget(c.id)
	c.end(fmt.Errorf("%w: channel %d ended", ErrClosed, c.id))
}

// Writer returns an io.Writer sending stream frames of type t.
func (c *Channel) Writer(t byte) io.Writer { return chanWriter{c, t} }

type chanWriter struct {
	c *Channel
	t byte
}

func (w chanWriter) Write(p []byte) (int, error) {
	if err := w.c.Send(w.t, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

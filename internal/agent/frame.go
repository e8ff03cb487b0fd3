package agent

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ControlVersion is the version of the protocol on the control port
// (version 1 was JSON lines; version 2 is the multiplexed framing below).
// Both ends announce it in their Hello; a host that meets another version
// says so and does not talk to that guest.
const ControlVersion = 2

// Frame types of the control port's version 2 (docs/agent-protocol.md).
const (
	// FrameHello opens a connection, both ways, on channel 0 (JSON Hello).
	FrameHello byte = 1
	// FrameOpen opens a channel, host to guest (JSON OpenRequest).
	FrameOpen byte = 2
	// FrameReply answers an Open, guest to host (JSON Reply).
	FrameReply byte = 3
	// FrameStdin, FrameStdout and FrameStderr carry stream bytes; they
	// count against the receiver's window.
	FrameStdin  byte = 4
	FrameStdout byte = 5
	FrameStderr byte = 6
	// FrameEOF ends the host's stream (stdin), host to guest.
	FrameEOF byte = 7
	// FrameWindow grants the peer more bytes of stream data on a channel
	// (4-byte big-endian increment).
	FrameWindow byte = 8
	// FrameControl is a request on an open channel, host to guest (JSON
	// Control: resize, signal).
	FrameControl byte = 9
	// FrameExit ends a channel, guest to host (JSON ExitStatus).
	FrameExit byte = 10
	// FrameClose abandons a channel, host to guest: the guest ends the
	// session (its process is killed).
	FrameClose byte = 11
	frameMax   byte = 11
)

// HeaderSize is the size of a frame header: payload length (4 bytes, big
// endian), channel (4), type (1).
const HeaderSize = 9

// MaxPayload bounds a frame's payload. A whole frame fits in one write on
// a virtio-serial port (the guest driver takes up to 32 KiB at a time), so
// frames never interleave.
const MaxPayload = 16 << 10

// Window is the stream data a receiver accepts on a channel before it
// grants more: what a fast writer can make either side hold per channel.
const Window = 256 << 10

// Magic precedes the Hello frame both ways. A reader skips everything up
// to it, so that bytes left over from an earlier connection (a frame the
// guest was writing when the host went away) are never taken for frames.
var Magic = []byte("KILNAGT2")

// Frame is one unit on the control port.
type Frame struct {
	Channel uint32
	Type    byte
	Payload []byte
}

// ErrFrame is wrapped by errors about malformed frames.
var ErrFrame = errors.New("malformed agent frame")

// AppendFrame appends f's encoding to b.
func AppendFrame(b []byte, f Frame) []byte {
	var h [HeaderSize]byte
	binary.BigEndian.PutUint32(h[0:4], uint32(len(f.Payload)))
	binary.BigEndian.PutUint32(h[4:8], f.Channel)
	h[8] = f.Type
	return append(append(b, h[:]...), f.Payload...)
}

// ReadFrame reads one frame. A payload over MaxPayload or an unknown type
// is an error wrapping ErrFrame; a stream cut inside a frame is
// io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader) (Frame, error) {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(h[0:4])
	f := Frame{Channel: binary.BigEndian.Uint32(h[4:8]), Type: h[8]}
	if n > MaxPayload {
		return Frame{}, fmt.Errorf("%w: payload of %d bytes (at most %d)", ErrFrame, n, MaxPayload)
	}
	if f.Type == 0 || f.Type > frameMax {
		return Frame{}, fmt.Errorf("%w: unknown type %d", ErrFrame, f.Type)
	}
	if n > 0 {
		f.Payload = make([]byte, n)
		if _, err := io.ReadFull(r, f.Payload); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
	}
	return f, nil
}

// SkipToMagic discards bytes from r up to and including Magic.
func SkipToMagic(r *bufio.Reader) error {
	var last []byte
	for {
		c, err := r.ReadByte()
		if err != nil {
			return err
		}
		last = append(last, c)
		if len(last) > len(Magic) {
			last = last[1:]
		}
		if bytes.Equal(last, Magic) {
			return nil
		}
	}
}

// isData reports whether frames of type t count against the window.
func isData(t byte) bool { return t == FrameStdin || t == FrameStdout || t == FrameStderr }

package agent

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestFrameRoundTrip(t *testing.T) {
	frames := []Frame{
		{Channel: 0, Type: FrameHello, Payload: []byte(`{"version":2}`)},
		{Channel: 7, Type: FrameStdout, Payload: bytes.Repeat([]byte{0xff}, MaxPayload)},
		{Channel: 1<<32 - 1, Type: FrameEOF},
	}
	var b []byte
	for _, f := range frames {
		b = AppendFrame(b, f)
	}
	r := bytes.NewReader(b)
	for _, want := range frames {
		got, err := ReadFrame(r)
		if err != nil {
			t.Fatal(err)
		}
		if got.Channel != want.Channel || got.Type != want.Type || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("got %d/%d/%d bytes, want %d/%d/%d bytes", got.Channel, got.Type, len(got.Payload), want.Channel, want.Type, len(want.Payload))
		}
	}
	if _, err := ReadFrame(r); err != io.EOF {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
}

func TestReadFrameRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"too long", []byte{0, 0, 0x40, 1, 0, 0, 0, 1, FrameStdout}, ErrFrame},
		{"unknown type", []byte{0, 0, 0, 0, 0, 0, 0, 1, 99}, ErrFrame},
		{"type zero", []byte{0, 0, 0, 0, 0, 0, 0, 1, 0}, ErrFrame},
		{"cut payload", []byte{0, 0, 0, 4, 0, 0, 0, 1, FrameStdout, 'a'}, io.ErrUnexpectedEOF},
		{"cut header", []byte{0, 0, 0}, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ReadFrame(bytes.NewReader(tc.in)); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSkipToMagic(t *testing.T) {
	in := append([]byte("stale KILNAGT frame bytes"), Magic...)
	in = AppendFrame(in, Frame{Type: FrameHello, Payload: []byte("{}")})
	r := bufio.NewReader(bytes.NewReader(in))
	if err := SkipToMagic(r); err != nil {
		t.Fatal(err)
	}
	f, err := ReadFrame(r)
	if err != nil || f.Type != FrameHello || string(f.Payload) != "{}" {
		t.Fatalf("after magic: %+v, %v", f, err)
	}
	if err := SkipToMagic(bufio.NewReader(strings.NewReader("no magic here"))); err != io.EOF {
		t.Fatalf("without magic: %v, want EOF", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, Frame{Channel: 3, Type: FrameStdin, Payload: []byte("hi")}))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, FrameWindow})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			before := r.Len()
			fr, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(fr.Payload) > MaxPayload || fr.Type == 0 || fr.Type > frameMax {
				t.Fatalf("accepted a frame it should refuse: %+v", fr)
			}
			used := data[len(data)-before : len(data)-r.Len()]
			if !bytes.Equal(AppendFrame(nil, fr), used) {
				t.Fatalf("re-encoding %+v differs from its input", fr)
			}
		}
	})
}

// muxPair connects a host mux and a guest mux whose channels echo stdin
// back as stdout, at the pace the host reads it.
func muxPair(t *testing.T) (*Mux, *Mux) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	guest := NewMux(bufio.NewReader(b), b, func(ch *Channel, _ []byte) {
		defer ch.Close()
		for {
			f, err := ch.Recv()
			if err != nil {
				return
			}
			switch f.Type {
			case FrameStdin:
				if ch.Send(FrameStdout, f.Payload) != nil {
					return
				}
			case FrameEOF:
				_ = ch.Send(FrameExit, nil)
				return
			}
		}
	})
	host := NewMux(bufio.NewReader(a), a, nil)
	go guest.Run()
	go host.Run()
	return host, guest
}

func TestMuxWindowBoundsWhatAReceiverHolds(t *testing.T) {
	host, _ := muxPair(t)
	slow, err := host.Open(1)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := host.Open(3)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range []*Channel{slow, fast} {
		if err := ch.Send(FrameOpen, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	// Push far more than a window into the channel nobody reads: the
	// sender stalls once the guest's echo is blocked by the host's window.
	sent := make(chan int, 1)
	go func() {
		n := 0
		chunk := make([]byte, 4096)
		for n < 4*Window {
			if slow.Send(FrameStdin, chunk) != nil {
				break
			}
			n += len(chunk)
		}
		sent <- n
	}()
	time.Sleep(200 * time.Millisecond)
	slow.mu.Lock()
	held := slow.queued
	slow.mu.Unlock()
	if held > Window {
		t.Fatalf("host holds %d bytes for an unread channel, window is %d", held, Window)
	}
	select {
	case n := <-sent:
		t.Fatalf("sender finished %d bytes into a channel nobody reads", n)
	default:
	}
	// Another channel still flows while the first is stalled.
	if err := fast.Send(FrameStdin, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	f, err := fast.Recv()
	if err != nil || string(f.Payload) != "ping" {
		t.Fatalf("second channel: %+v, %v", f, err)
	}
	// Reading the first lets it finish.
	got := 0
	go func() {
		for {
			f, err := slow.Recv()
			if err != nil {
				return
			}
			got += len(f.Payload)
		}
	}()
	select {
	case n := <-sent:
		if n != 4*Window {
			t.Fatalf("sent %d bytes, want %d", n, 4*Window)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the sender never finished once the receiver read")
	}
}

func TestMuxPeerGoneEndsChannels(t *testing.T) {
	a, b := net.Pipe()
	host := NewMux(bufio.NewReader(a), a, nil)
	go host.Run()
	ch, err := host.Open(5)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := ch.Recv(); !errors.Is(err, ErrClosed) && err == nil {
		t.Fatalf("Recv after the peer went away: %v", err)
	}
	select {
	case <-host.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("mux did not end")
	}
	if _, err := host.Open(7); err == nil {
		t.Fatal("Open on an ended mux succeeded")
	}
}

func TestMuxRejectsSendingPastTheWindow(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	host := NewMux(bufio.NewReader(a), a, nil)
	if _, err := host.Open(9); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- host.Run() }()
	chunk := AppendFrame(nil, Frame{Channel: 9, Type: FrameStdout, Payload: make([]byte, MaxPayload)})
	go func() {
		for i := 0; i <= Window/MaxPayload; i++ {
			if _, err := b.Write(chunk); err != nil {
				return
			}
		}
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrFrame) {
			t.Fatalf("got %v, want a protocol error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a peer overrunning its window was not refused")
	}
}

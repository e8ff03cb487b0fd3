package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeGuest answers a host's hello with h (nil: never answers) and then
// serves a mux whose channels reply to every open.
func fakeGuest(t *testing.T, h *Hello) net.Conn {
	t.Helper()
	host, guest := net.Pipe()
	t.Cleanup(func() { host.Close(); guest.Close() })
	go func() {
		r := bufio.NewReader(guest)
		if SkipToMagic(r) != nil {
			return
		}
		if f, err := ReadFrame(r); err != nil || f.Type != FrameHello {
			return
		}
		if h == nil {
			io.Copy(io.Discard, r)
			return
		}
		b, _ := json.Marshal(h)
		guest.Write(AppendFrame(append([]byte("stale bytes"), Magic...), Frame{Type: FrameHello, Payload: b}))
		m := NewMux(r, guest, func(ch *Channel, req []byte) {
			var o OpenRequest
			json.Unmarshal(req, &o)
			if o.Op == "hang" {
				return // a hostile guest: it takes the request and never answers
			}
			if o.Op == "fail" {
				ch.SendJSON(FrameReply, Reply{Error: "no such thing", ExitCode: 127})
			} else {
				ch.SendJSON(FrameReply, Reply{PID: 42})
			}
			ch.Close()
		})
		m.Run()
	}()
	return host
}

func TestClientHelloAndRequests(t *testing.T) {
	c, err := NewClient(fakeGuest(t, &Hello{Version: ControlVersion}), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.Do(OpenRequest{Op: OpSignal, Signal: 1})
	if err != nil || r.PID != 42 {
		t.Fatalf("Do: %+v, %v", r, err)
	}
	r, err = c.Do(OpenRequest{Op: "fail"})
	if err == nil || r.ExitCode != 127 || !strings.Contains(err.Error(), "no such thing") {
		t.Fatalf("Do of a failing op: %+v, %v", r, err)
	}
}

func TestClientMeetsAnOldGuest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hello *Hello
		want  string
	}{
		{"silent version 1", nil, "no answer to a version 2 hello"},
		{"another version", &Hello{Version: 3}, "speaks version 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewClient(fakeGuest(t, tc.hello), 300*time.Millisecond)
			if !errors.Is(err, ErrOldGuest) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrOldGuest saying %q", err, tc.want)
			}
		})
	}
}

// TestClientDoesNotWaitForeverOnAHungGuest: a guest that takes a request
// and never answers costs the caller the reply deadline, and the
// connection stays usable for the next request.
func TestClientDoesNotWaitForeverOnAHungGuest(t *testing.T) {
	c, err := NewClient(fakeGuest(t, &Hello{Version: ControlVersion}), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.ReplyTimeout = 200 * time.Millisecond
	done := make(chan error, 1)
	go func() { _, err := c.Do(OpenRequest{Op: "hang"}); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNoReply) {
			t.Errorf("Do on a guest that never replies = %v, want ErrNoReply", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Do on a guest that never replies did not return")
	}
	if r, err := c.Do(OpenRequest{Op: OpSignal, Signal: 1}); err != nil || r.PID != 42 {
		t.Errorf("the next request after a hung one: %+v, %v", r, err)
	}
}

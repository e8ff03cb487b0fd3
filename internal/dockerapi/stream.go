package dockerapi

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
)

// hijacked is a connection taken over from net/http for one of docker's
// raw streams (attach, exec start). Reads take what the client sends
// (stdin); writes go straight to the client.
type hijacked struct {
	net.Conn
	r *bufio.Reader
}

func (h *hijacked) Read(p []byte) (int, error) { return h.r.Read(p) }

// CloseWrite half-closes the connection: the client sees the stream end
// and may still send.
func (h *hijacked) CloseWrite() error {
	if cw, ok := h.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return h.Conn.Close()
}

// hijack answers the request with docker's stream header (101 when the
// client asked to upgrade, else 200) and takes the connection over.
// multiplexed says whether the stream will carry docker's frames.
func hijack(w http.ResponseWriter, r *http.Request, multiplexed bool) (*hijacked, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, fmt.Errorf("this connection cannot carry a stream")
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return nil, fmt.Errorf("taking over the connection: %w", err)
	}
	ctype := "application/vnd.docker.raw-stream"
	if multiplexed {
		ctype = "application/vnd.docker.multiplexed-stream"
	}
	head := "HTTP/1.1 200 OK\r\nContent-Type: " + ctype + "\r\n\r\n"
	if r.Header.Get("Upgrade") != "" {
		head = "HTTP/1.1 101 UPGRADED\r\nContent-Type: " + ctype + "\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
	}
	if _, err := io.WriteString(conn, head); err != nil {
		conn.Close()
		return nil, err
	}
	return &hijacked{Conn: conn, r: buf.Reader}, nil
}

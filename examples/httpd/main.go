// Command httpd is a small static HTTP server for trying kiln's published
// ports: it answers "hello from kiln VM <hostname>" on /, serves the files
// of -dir under /files/ when given, streams N zero bytes on /zero?bytes=N,
// and with -udp echoes UDP datagrams back to their sender. It logs one line
// per listener (on stdout) and exits on SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func main() {
	addr := flag.String("addr", ":80", "TCP address to serve HTTP on")
	dir := flag.String("dir", "", "serve this directory's files under /files/")
	udp := flag.String("udp", "", "UDP address to echo datagrams on (e.g. :53)")
	flag.Parse()
	log.SetFlags(0)
	log.SetOutput(os.Stdout) // its log is its output: kiln logs shows it on stdout
	host, _ := os.Hostname()

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "hello from kiln VM %s\n", host)
	})
	// /zero?bytes=N streams N zero bytes: a download of any size without a
	// file in the guest (for benchmarks).
	mux.HandleFunc("/zero", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "want ?bytes=N", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 64<<10)
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	if *dir != "" {
		mux.Handle("/files/", http.StripPrefix("/files/", http.FileServer(http.Dir(*dir))))
	}
	if *udp != "" {
		pc, err := net.ListenPacket("udp", *udp)
		if err != nil {
			log.Fatalf("httpd: %v", err)
		}
		log.Printf("httpd: echoing UDP on %s", pc.LocalAddr())
		go echo(pc)
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("httpd: %v", err)
	}
	log.Printf("httpd: serving HTTP on %s", l.Addr())
	srv := &http.Server{Handler: mux}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		srv.Shutdown(context.Background())
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("httpd: %v", err)
	}
}

func echo(pc net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(buf[:n], from)
	}
}

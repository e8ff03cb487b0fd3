package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// urlList is a repeatable flag.
type urlList []string

func (l *urlList) String() string     { return strings.Join(*l, ",") }
func (l *urlList) Set(s string) error { *l = append(*l, s); return nil }

// get resolves the URL's host and GETs it, printing one line for each:
// "resolve HOST: ADDRS" or "resolve HOST: error ...", then
// "get URL: BODY" or "get URL: error ...". A refused connection is retried
// for a few seconds (the server may still be starting); a timeout is not.
func get(u string) {
	pu, err := url.Parse(u)
	if err != nil {
		fmt.Printf("get %s: error %v\n", u, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	addrs, err := net.DefaultResolver.LookupHost(ctx, pu.Hostname())
	cancel()
	if err != nil {
		fmt.Printf("resolve %s: error %v\n", pu.Hostname(), err)
		return
	}
	fmt.Printf("resolve %s: %s\n", pu.Hostname(), strings.Join(addrs, " "))
	c := &http.Client{Timeout: 3 * time.Second}
	var last error
	for range 10 {
		resp, err := c.Get(u)
		if err == nil {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				fmt.Printf("get %s: %s\n", u, strings.TrimSpace(string(b)))
				return
			}
		}
		last = err
		if !strings.Contains(fmt.Sprint(err), "refused") {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	fmt.Printf("get %s: error %v\n", u, last)
}

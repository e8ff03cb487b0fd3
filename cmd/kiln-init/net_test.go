//go:build linux

package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestBroadcast(t *testing.T) {
	for in, want := range map[string]string{"10.0.2.15/24": "10.0.2.255", "10.1.2.3/16": "10.1.255.255", "10.0.0.1/32": "10.0.0.1"} {
		b := broadcast(netip.MustParsePrefix(in))
		if got := netip.AddrFrom4(b).String(); got != want {
			t.Errorf("broadcast(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestAttrPads(t *testing.T) {
	got := attr([]byte{1, 2, 3, 4}, 7, []byte{9, 9, 9, 9, 9})
	// header: len 9, type 7 (native endian), data, three bytes of padding
	want := append([]byte{1, 2, 3, 4}, 0, 0, 0, 0, 9, 9, 9, 9, 9, 0, 0, 0)
	ne.PutUint16(want[4:], 9)
	ne.PutUint16(want[6:], 7)
	if !bytes.Equal(got, want) {
		t.Errorf("attr = %v, want %v", got, want)
	}
}

func TestWaitLinkReady(t *testing.T) {
	dir := t.TempDir()
	eth := filepath.Join(dir, "eth0")
	if err := os.MkdirAll(eth, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(v string) { // whole, as sysfs shows it: never half-written
		tmp := filepath.Join(dir, "carrier.tmp")
		if err := os.WriteFile(tmp, []byte(v+"\n"), 0o644); err != nil {
			t.Error(err)
		}
		if err := os.Rename(tmp, filepath.Join(eth, "carrier")); err != nil {
			t.Error(err)
		}
	}
	// The carrier comes on 100 ms after the wait starts: the wait lasts
	// until then and reports it.
	write("0")
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(100 * time.Millisecond)
		write("1")
	}()
	start := time.Now()
	state, ok := waitLinkReady(dir, "eth0", 5*time.Second)
	<-done
	if !ok || state != "1" || time.Since(start) < 100*time.Millisecond {
		t.Errorf("waitLinkReady = %q, %v after %s; want 1, true after at least 100ms", state, ok, time.Since(start))
	}

	// A carrier that stays off is given up on at the timeout.
	write("0")
	if state, ok := waitLinkReady(dir, "eth0", 50*time.Millisecond); ok || state != "carrier 0" {
		t.Errorf("a carrier that stays off: waitLinkReady = %q, %v; want carrier 0, false", state, ok)
	}
	// Without sysfs there is nothing to wait for.
	if _, ok := waitLinkReady(dir, "eth1", 5*time.Second); !ok {
		t.Error("an interface with no sysfs entry was waited on")
	}
}

//go:build linux

package main

import (
	"bytes"
	"net/netip"
	"testing"
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

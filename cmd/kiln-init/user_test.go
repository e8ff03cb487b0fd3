//go:build linux

package main

import (
	"slices"
	"strings"
	"testing"
)

const testPasswd = `root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken line
app:x:1000:1001:App:/home/app:/bin/sh
bad:x:notanumber:1:::
`

const testGroup = `root:x:0:
daemon:x:1:
appgrp:x:1001:
extra:x:2000:app,daemon
other:x:3000: daemon , app
short:x
`

func TestLookupUser(t *testing.T) {
	passwd := parsePasswd(strings.NewReader(testPasswd))
	group := parseGroup(strings.NewReader(testGroup))
	tests := []struct {
		spec    string
		want    execUser
		wantErr string
	}{
		{"", execUser{uid: 0, gid: 0, home: "/root"}, ""},
		{"root", execUser{uid: 0, gid: 0, home: "/root"}, ""},
		{"app", execUser{uid: 1000, gid: 1001, sgids: []uint32{2000, 3000}, home: "/home/app"}, ""},
		{"1000", execUser{uid: 1000, gid: 1001, sgids: []uint32{2000, 3000}, home: "/home/app"}, ""},
		{"daemon", execUser{uid: 1, gid: 1, sgids: []uint32{2000, 3000}, home: "/usr/sbin"}, ""},
		{"app:extra", execUser{uid: 1000, gid: 2000, home: "/home/app"}, ""},
		{"app:0", execUser{uid: 1000, gid: 0, home: "/home/app"}, ""},
		{"app:4242", execUser{uid: 1000, gid: 4242, home: "/home/app"}, ""},
		{"4242", execUser{uid: 4242, gid: 0, home: "/"}, ""},
		{"4242:4343", execUser{uid: 4242, gid: 4343, home: "/"}, ""},
		{"4242:appgrp", execUser{uid: 4242, gid: 1001, home: "/"}, ""},
		{"nobody", execUser{}, "unable to find user nobody"},
		{"app:nogroup", execUser{}, "unable to find group nogroup"},
		{"app:", execUser{}, "empty group"},
		{":1", execUser{}, "empty user"},
		{"4294967295", execUser{}, "unable to find user"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := lookupUser(tt.spec, passwd, group)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("lookupUser(%q) = %+v, %v; want error containing %q", tt.spec, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("lookupUser(%q): %v", tt.spec, err)
			}
			if got.uid != tt.want.uid || got.gid != tt.want.gid || got.home != tt.want.home || !slices.Equal(got.sgids, tt.want.sgids) {
				t.Errorf("lookupUser(%q) = %+v, want %+v", tt.spec, got, tt.want)
			}
		})
	}
}

func TestLookupUserWithoutDatabases(t *testing.T) {
	if u, err := lookupUser("", nil, nil); err != nil || u.uid != 0 || u.gid != 0 || u.home != "/" {
		t.Errorf("empty user, no passwd: %+v, %v", u, err)
	}
	if u, err := lookupUser("65532:65532", nil, nil); err != nil || u.uid != 65532 || u.gid != 65532 {
		t.Errorf("numeric user, no passwd: %+v, %v", u, err)
	}
	if _, err := lookupUser("app", nil, nil); err == nil {
		t.Error("a user name without a passwd file resolved")
	}
}

// FuzzLookupUser feeds image-provided user databases and user specs to the
// resolver: it must never panic, and a user it resolves by number is that
// number.
func FuzzLookupUser(f *testing.F) {
	f.Add(testPasswd, testGroup, "app")
	f.Add(testPasswd, testGroup, "1000:extra")
	f.Add("a:b:c", "::::", ":")
	f.Add("x:x:4294967295:0:::\n", "g:x:-1:a,,b\n", "4294967295")
	f.Fuzz(func(t *testing.T, passwd, group, spec string) {
		u, err := lookupUser(spec, parsePasswd(strings.NewReader(passwd)), parseGroup(strings.NewReader(group)))
		if err != nil {
			return
		}
		name, _, _ := strings.Cut(spec, ":")
		if n, perr := parseID(name); perr == nil && u.uid != n {
			// A passwd entry named like a number may win; otherwise
			// the number is the uid.
			byName := false
			for _, p := range parsePasswd(strings.NewReader(passwd)) {
				if p.name == name {
					byName = true
				}
			}
			if !byName {
				t.Errorf("lookupUser(%q) uid %d", spec, u.uid)
			}
		}
	})
}

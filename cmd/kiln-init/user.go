//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"kiln.dev/kiln/internal/agent"
)

// maxID is the largest uid or gid accepted, as runc accepts them.
const maxID = 1<<31 - 1

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

// groupEntry is one line of /etc/group.
type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// execUser is who the program runs as.
type execUser struct {
	uid, gid uint32
	sgids    []uint32
	home     string
}

// applyUser resolves s.User against the root's /etc/passwd and /etc/group
// and sets the spec's ids, and HOME when the environment has none, as
// docker does. Missing files are empty databases: numeric ids still work.
// It does nothing for a bare VM (no Root and no User), whose ids the host
// set.
func applyUser(s *agent.Spec) error {
	if s.User == "" && s.Root == nil {
		return nil
	}
	passwd, err := readDB("/etc/passwd", parsePasswd)
	if err != nil {
		return err
	}
	group, err := readDB("/etc/group", parseGroup)
	if err != nil {
		return err
	}
	u, err := lookupUser(s.User, passwd, group)
	if err != nil {
		return err
	}
	s.UID, s.GID, s.AdditionalGIDs = u.uid, u.gid, u.sgids
	if !hasEnv(s.Env, "HOME") {
		s.Env = append(s.Env, "HOME="+u.home)
	}
	return nil
}

func hasEnv(env []string, key string) bool {
	for _, e := range env {
		if k, _, _ := strings.Cut(e, "="); k == key {
			return true
		}
	}
	return false
}

func readDB[T any](path string, parse func(io.Reader) []T) ([]T, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	return parse(f), nil
}

// lookupUser resolves spec ("user[:group]", each a name or a number) the
// way runc does for docker:
//   - the user is looked up by name or uid in passwd; a name must exist, a
//     uid need not (it then has gid 0 and home /);
//   - a group, when given, is looked up by name or gid in group; a name must
//     exist, a gid need not; it replaces the primary group and the user
//     gets no supplementary groups;
//   - otherwise a user found by name gets as supplementary groups every
//     group that lists that name as a member.
//
// An empty user is uid 0.
func lookupUser(spec string, passwd []passwdEntry, group []groupEntry) (execUser, error) {
	userArg, groupArg, hasGroup := strings.Cut(spec, ":")
	if hasGroup && groupArg == "" {
		return execUser{}, fmt.Errorf("invalid user %q: empty group", spec)
	}
	if userArg == "" {
		if hasGroup {
			return execUser{}, fmt.Errorf("invalid user %q: empty user", spec)
		}
		userArg = "0"
	}
	uidNum, uidErr := parseID(userArg)
	u := execUser{home: "/"}
	matched := ""
	found := false
	for _, p := range passwd {
		if p.name == userArg || (uidErr == nil && p.uid == uidNum) {
			u.uid, u.gid, u.home, matched, found = p.uid, p.gid, p.home, p.name, true
			break
		}
	}
	if !found {
		if uidErr != nil {
			return execUser{}, fmt.Errorf("unable to find user %s: no matching entries in passwd file", userArg)
		}
		u.uid = uidNum
	}
	if hasGroup {
		gidNum, gidErr := parseID(groupArg)
		gfound := false
		for _, g := range group {
			if g.name == groupArg || (gidErr == nil && g.gid == gidNum) {
				u.gid, gfound = g.gid, true
				break
			}
		}
		if !gfound {
			if gidErr != nil {
				return execUser{}, fmt.Errorf("unable to find group %s: no matching entries in group file", groupArg)
			}
			u.gid = gidNum
		}
		return u, nil
	}
	if matched != "" {
		for _, g := range group {
			for _, m := range g.members {
				if m == matched {
					u.sgids = append(u.sgids, g.gid)
					break
				}
			}
		}
	}
	return u, nil
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > maxID {
		return 0, fmt.Errorf("not an id: %q", s)
	}
	return uint32(n), nil
}

// parsePasswd reads passwd(5) lines; malformed ones are skipped.
func parsePasswd(r io.Reader) []passwdEntry {
	var out []passwdEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 7 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, passwdEntry{name: f[0], uid: uid, gid: gid, home: f[5]})
	}
	return out
}

// parseGroup reads group(5) lines; malformed ones are skipped.
func parseGroup(r io.Reader) []groupEntry {
	var out []groupEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 4 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		gid, err := parseID(f[2])
		if err != nil {
			continue
		}
		g := groupEntry{name: f[0], gid: gid}
		for _, m := range strings.Split(f[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				g.members = append(g.members, m)
			}
		}
		out = append(out, g)
	}
	return out
}

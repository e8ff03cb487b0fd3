package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"kiln.dev/kiln/internal/agent"
)

// topBudget bounds the JSON of a top reply, so that it fits in one frame
// with room for the rest of the reply.
const topBudget = agent.MaxPayload - 1024

// clockTicks is USER_HZ, what /proc/PID/stat counts CPU time in (100 on
// every Linux kiln boots).
const clockTicks = 100

// guestTop lists the processes under proc, by PID, as many as fit in
// budget bytes of JSON; truncated says some did not.
func guestTop(proc string, budget int) (out []agent.Process, truncated bool) {
	ents, _ := filepath.Glob(filepath.Join(proc, "[0-9]*"))
	pids := make([]int, 0, len(ents))
	for _, e := range ents {
		if pid, err := strconv.Atoi(filepath.Base(e)); err == nil {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	size := 2 // []
	for _, pid := range pids {
		p, ok := readProcess(proc, pid)
		if !ok {
			continue // gone meanwhile
		}
		b, _ := json.Marshal(p)
		if size+len(b)+1 > budget {
			return out, true
		}
		size += len(b) + 1
		out = append(out, p)
	}
	return out, false
}

// readProcess reads one process's stat, status and cmdline.
func readProcess(proc string, pid int) (agent.Process, bool) {
	dir := filepath.Join(proc, strconv.Itoa(pid))
	p := agent.Process{PID: pid}
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return p, false
	}
	// pid (comm) state ppid ... utime(14) stime(15) ... rss(24); comm may
	// hold spaces and parentheses, so fields count from its last ')'.
	s := string(stat)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return p, false
	}
	comm := s[open+1 : close]
	f := strings.Fields(s[close+1:])
	if len(f) < 22 {
		return p, false
	}
	p.State = f[0]
	p.PPID, _ = strconv.Atoi(f[1])
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	p.CPUSeconds = float64(utime+stime) / clockTicks
	rss, _ := strconv.ParseUint(f[21], 10, 64)
	p.RSSBytes = rss * uint64(os.Getpagesize())
	if b, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "Uid:"); ok {
				if uf := strings.Fields(rest); len(uf) > 0 {
					u, _ := strconv.ParseUint(uf[0], 10, 32)
					p.UID = uint32(u)
				}
			}
		}
	}
	cmd, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
	p.Cmd = strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
	if p.Cmd == "" {
		p.Cmd = "[" + comm + "]"
	}
	if len(p.Cmd) > agent.MaxCmd {
		p.Cmd = p.Cmd[:agent.MaxCmd]
	}
	return p, true
}

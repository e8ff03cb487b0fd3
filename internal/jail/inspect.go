package jail

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Status is how a running process is confined, as the kernel reports it.
type Status struct {
	UID, GID int
	// CapEff is the effective capability set, hex as in /proc.
	CapEff     string
	NoNewPrivs bool
	// Seccomp is "disabled", "strict" or "filter".
	Seccomp string
	// Namespaces are the namespaces (mnt, pid, ipc, uts, net, user, cgroup)
	// the process does not share with the caller.
	Namespaces []string
	// Root lists what the process sees at its root directory.
	Root []string
	// Cgroups are the process's cgroups, one "hierarchy:path" each.
	Cgroups []string
}

// ParseStatus reads the fields Status takes from a /proc/<pid>/status
// text.
func ParseStatus(text string) (Status, error) {
	var s Status
	seen := 0
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "Uid":
			s.UID, _ = strconv.Atoi(f[0])
			seen++
		case "Gid":
			s.GID, _ = strconv.Atoi(f[0])
			seen++
		case "CapEff":
			s.CapEff = f[0]
			seen++
		case "NoNewPrivs":
			s.NoNewPrivs = f[0] == "1"
		case "Seccomp":
			s.Seccomp = map[string]string{"0": "disabled", "1": "strict", "2": "filter"}[f[0]]
		}
	}
	if seen < 3 {
		return s, fmt.Errorf("process status without Uid, Gid and CapEff")
	}
	if s.Seccomp == "" {
		s.Seccomp = "disabled"
	}
	return s, nil
}

// namespaces are the kinds of namespace Inspect compares.
var namespaces = []string{"mnt", "pid", "ipc", "uts", "net", "user", "cgroup"}

// Inspect reports how process pid is confined, from /proc.
func Inspect(pid int) (Status, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(dir + "/status")
	if err != nil {
		return Status{}, fmt.Errorf("reading the status of pid %d: %w", pid, err)
	}
	s, err := ParseStatus(string(b))
	if err != nil {
		return s, fmt.Errorf("reading the status of pid %d: %w", pid, err)
	}
	for _, ns := range namespaces {
		theirs, err1 := os.Readlink(dir + "/ns/" + ns)
		ours, err2 := os.Readlink("/proc/self/ns/" + ns)
		if err1 == nil && err2 == nil && theirs != ours {
			s.Namespaces = append(s.Namespaces, ns)
		}
	}
	if ents, err := os.ReadDir(dir + "/root"); err == nil {
		for _, e := range ents {
			s.Root = append(s.Root, "/"+e.Name())
		}
		sort.Strings(s.Root)
	}
	if b, err := os.ReadFile(dir + "/cgroup"); err == nil {
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			// "ID:controllers:path"
			if _, rest, ok := strings.Cut(l, ":"); ok && rest != "" {
				s.Cgroups = append(s.Cgroups, rest)
			}
		}
	}
	return s, nil
}

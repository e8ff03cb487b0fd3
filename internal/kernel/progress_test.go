package kernel

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock           { return &fakeClock{t: time.Unix(1700000000, 0)} }
func progressFor(w *bytes.Buffer, redraw bool, expect int, c *fakeClock) *buildProgress {
	p := newBuildProgress(w, redraw, expect)
	p.now = c.now
	p.start = c.now()
	return p
}

// TestBuildProgressCountsKbuildOutput feeds recorded make output
// (testdata/make-vmlinux.txt: the start and the end of `make -j2
// vmlinux` in a real build's log) through the progress in odd-sized
// writes and checks what it counted and said.
func TestBuildProgressCountsKbuildOutput(t *testing.T) {
	rec, err := os.ReadFile(filepath.Join("testdata", "make-vmlinux.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, l := range strings.Split(string(rec), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && (f[0] == "CC" || f[0] == "AS") && strings.HasSuffix(f[len(f)-1], ".o") {
			want++
		}
	}
	var out bytes.Buffer
	c := newFakeClock()
	p := progressFor(&out, false, 100, c)
	p.setStage(stageConfigure)
	c.add(30 * time.Second)
	for i := 0; i < len(rec); i += 7 { // lines cut anywhere
		p.Write(rec[i:min(i+7, len(rec))])
		c.add(100 * time.Millisecond)
	}
	if p.objects != want || want == 0 {
		t.Errorf("counted %d objects, the recording has %d CC/AS lines", p.objects, want)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("progress said %d lines, want the three stages:\n%s", len(lines), out.String())
	}
	for i, prefix := range []string{"kernel: configuring", "kernel: compiling (CC 1/100 objects, ", "kernel: linking vmlinux (CC"} {
		if !strings.HasPrefix(lines[i], prefix) {
			t.Errorf("line %d = %q, want it to start %q", i, lines[i], prefix)
		}
	}
	if strings.Contains(out.String(), "\r") {
		t.Error("carriage returns in progress that is not on a terminal")
	}
}

// TestBuildProgressStatus checks the line itself: the count against the
// estimate, the time left from the rate once there is enough to go on,
// the hint before, and a count past the estimate.
func TestBuildProgressStatus(t *testing.T) {
	c := newFakeClock()
	var out bytes.Buffer
	p := progressFor(&out, false, 1000, c)
	c.add(40 * time.Second)
	p.setStage(stageCompile)
	kb := func(n int) {
		for i := 0; i < n; i++ {
			p.Write([]byte("  CC      kernel/x.o\n"))
		}
	}
	kb(50)
	c.add(20 * time.Second)
	if got, want := p.status(), "kernel: compiling (CC 50/1000 objects, 1m elapsed; "+firstBuildHint+")"; got != want {
		t.Errorf("early status = %q, want %q", got, want)
	}
	kb(150) // 200 objects in 60 s of compiling: 4 minutes for the other 800
	c.add(40 * time.Second)
	if got, want := p.status(), "kernel: compiling (CC 200/1000 objects, 1m40s elapsed, about 4m left)"; got != want {
		t.Errorf("status = %q, want %q", got, want)
	}
	kb(900)
	if got, want := p.status(), "kernel: compiling (CC 1100 objects, 1m40s elapsed; "+firstBuildHint+")"; got != want {
		t.Errorf("past the estimate = %q, want %q", got, want)
	}
	p.Write([]byte("  LD      vmlinux.o\n"))
	if got, want := p.status(), "kernel: linking vmlinux (CC 1100 objects, 1m40s elapsed)"; got != want {
		t.Errorf("linking = %q, want %q", got, want)
	}
}

// TestBuildProgressRedraws: on a terminal the line is redrawn in place
// and ended before anything else is said.
func TestBuildProgressRedraws(t *testing.T) {
	c := newFakeClock()
	var out bytes.Buffer
	p := progressFor(&out, true, 10, c)
	p.setStage(stageUnpack)
	p.setStage(stageConfigure)
	p.say("done")
	if got, want := out.String(), "\r\x1b[Kkernel: unpacking the source (0s elapsed; "+firstBuildHint+")"+
		"\r\x1b[Kkernel: configuring tinyconfig + kiln's fragment (0s elapsed; "+firstBuildHint+")\n"+
		"kernel: done\n"; got != want {
		t.Errorf("terminal output = %q, want %q", got, want)
	}
}

// TestBuildProgressSilent: with nowhere to show progress it counts all
// the same and writes nothing.
func TestBuildProgressSilent(t *testing.T) {
	p := newBuildProgress(nil, false, 0)
	p.begin()
	p.setStage(stageCompile)
	p.Write([]byte("  CC      init/main.o\n  AS      arch/x86/entry/entry_64.o\n  HOSTCC  scripts/basic/fixdep\n"))
	p.end()
	if n, _ := p.result(); n != 2 {
		t.Errorf("counted %d objects, want 2", n)
	}
	if p.expect != defaultObjects {
		t.Errorf("expect = %d, want defaultObjects", p.expect)
	}
}

// TestLogTail quotes the last lines of a long log, whole lines only.
func TestLogTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "build.log")
	var b strings.Builder
	for i := 0; i < 5000; i++ {
		b.WriteString("  CC      some/object/file.o\n")
	}
	b.WriteString("kernel/fork.c:12:1: error: expected ';' before '}' token\nmake: *** [Makefile:1234: kernel] Error 2\n")
	os.WriteFile(p, []byte(b.String()), 0o644)
	got := logTail(p, 3)
	want := "; the last lines of the build log " + p + ":\n  CC      some/object/file.o\nkernel/fork.c:12:1: error: expected ';' before '}' token\nmake: *** [Makefile:1234: kernel] Error 2"
	if got != want {
		t.Errorf("logTail = %q, want %q", got, want)
	}
	os.WriteFile(p, nil, 0o644)
	if got := logTail(p, 3); !strings.Contains(got, "is empty") {
		t.Errorf("logTail of an empty log = %q", got)
	}
}

// TestBuildFailureShowsTheLog: a build that fails (here, at unpacking a
// source that is no tarball) says where its log is and quotes its last
// lines, and the log stays.
func TestBuildFailureShowsTheLog(t *testing.T) {
	for _, tool := range []string{"make", "gcc", "flex", "bison", "bc", "tar", "xz"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found (scripts/setup installs what a kernel build needs)", tool)
		}
	}
	src := filepath.Join(t.TempDir(), "linux.tar.xz")
	os.WriteFile(src, []byte("not a tarball"), 0o644)
	s := NewStore(t.TempDir())
	var progress bytes.Buffer
	_, _, err := s.Build(t.Context(), BuildOptions{Source: src, Progress: &progress})
	logPath := s.BuildLog(DefaultName)
	if err == nil || !strings.Contains(err.Error(), "unpacking kernel source") || !strings.Contains(err.Error(), "the last lines of the build log "+logPath+":\n") {
		t.Fatalf("Build = %v, want the unpacking error quoting the log", err)
	}
	t.Log(err)
	b, rerr := os.ReadFile(logPath)
	if rerr != nil || !strings.Contains(string(b), "+ tar -xf "+src) {
		t.Errorf("build log: %q, %v", b, rerr)
	}
	if !strings.HasPrefix(progress.String(), `kernel: building "default" from linux.tar.xz`) || !strings.Contains(progress.String(), logPath) {
		t.Errorf("progress = %q, want it to start by naming the log", progress.String())
	}
}

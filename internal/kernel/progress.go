package kernel

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// defaultObjects is how many objects (kbuild's CC and AS lines) a build
// of linux-source-6.1 (6.1.192-3) with kiln's fragment compiles: the
// progress's denominator until a build of that name has recorded its own
// count (Kernel.Objects). Measured here.
const defaultObjects = 1116

// firstBuildHint is what a build takes here, said while the progress has
// too little to estimate from: about 10 minutes of CPU (8m user, 2m
// system, measured with `time kiln kernel build`), so about 5 on two idle
// cores; a busy host takes longer (15 minutes with two other builds and
// test suites sharing the cores).
const firstBuildHint = "a first build takes about 5 minutes on 2 idle cores"

// Build stages, as the progress names them.
const (
	stageUnpack    = "unpacking the source"
	stageConfigure = "configuring tinyconfig + kiln's fragment"
	stageCompile   = "compiling"
	stageLink      = "linking vmlinux"
)

// buildProgress follows a kernel build's output and says, every so often,
// what the build is doing and how far it is. The output is kbuild's
// quiet one ("  CC      kernel/fork.o"), one line per step; the compile
// steps are counted against how many a build of this config makes.
//
// On a terminal (redraw) it keeps one line up to date with carriage
// returns; otherwise, for logs, it writes a plain line at each stage and
// every interval.
type buildProgress struct {
	w        io.Writer // nil: no progress is shown
	redraw   bool
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	start   time.Time
	since   time.Time // when the compile started
	stage   string
	objects int // CC and AS lines seen
	expect  int // objects a build makes, estimated
	partial []byte
	drawn   bool // a redrawn line is on the screen
	stop    chan struct{}
	done    chan struct{}
}

func newBuildProgress(w io.Writer, redraw bool, expect int) *buildProgress {
	interval := 10 * time.Second
	if redraw {
		interval = time.Second
	}
	if expect <= 0 {
		expect = defaultObjects
	}
	return &buildProgress{w: w, redraw: redraw, interval: interval, now: time.Now, expect: expect}
}

// begin starts the clock and, when progress is shown, the ticker.
func (p *buildProgress) begin() {
	p.mu.Lock()
	p.start = p.now()
	p.mu.Unlock()
	if p.w == nil {
		return
	}
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.done)
		t := time.NewTicker(p.interval)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.mu.Lock()
				p.show()
				p.mu.Unlock()
			}
		}
	}()
}

// end stops the ticker and, on a terminal, ends the redrawn line.
func (p *buildProgress) end() {
	if p.stop != nil {
		close(p.stop)
		<-p.done
		p.stop = nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// say writes a line of its own (the log's path, the result), ending a
// redrawn line first.
func (p *buildProgress) say(format string, args ...any) {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
	fmt.Fprintf(p.w, "kernel: "+format+"\n", args...)
}

// setStage moves to the next stage and shows it.
func (p *buildProgress) setStage(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.enter(s)
}

// enter moves to stage s and shows it. Preconditions: p.mu is held.
func (p *buildProgress) enter(s string) {
	if p.stage == s {
		return
	}
	p.stage = s
	if s == stageCompile {
		p.since = p.now()
	}
	p.show()
}

// Write takes the build's output.
func (p *buildProgress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	data := b
	if len(p.partial) > 0 {
		data = append(p.partial, b...)
		p.partial = nil
	}
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		p.line(string(data[:i]))
		data = data[i+1:]
	}
	if len(data) > 0 && len(data) < 4096 { // a longer "line" is not kbuild's
		p.partial = append([]byte(nil), data...)
	}
	return len(b), nil
}

// line counts one line of kbuild's output. Preconditions: p.mu is held.
func (p *buildProgress) line(l string) {
	f := strings.Fields(l)
	if len(f) < 2 {
		return
	}
	switch f[0] {
	case "CC", "AS":
		if strings.HasSuffix(f[len(f)-1], ".o") {
			p.objects++
			if p.stage != stageCompile && p.stage != stageLink {
				p.enter(stageCompile)
			}
		}
	case "LD":
		if t := f[len(f)-1]; t == "vmlinux" || t == "vmlinux.o" {
			p.enter(stageLink)
		}
	}
}

// result is how many objects were compiled and how long the build has
// taken.
func (p *buildProgress) result() (int, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.objects, p.now().Sub(p.start).Round(time.Second)
}

// status is the progress line. Preconditions: p.mu is held.
func (p *buildProgress) status() string {
	elapsed := p.now().Sub(p.start).Truncate(time.Second)
	var b strings.Builder
	b.WriteString("kernel: ")
	if p.stage == "" {
		b.WriteString("starting")
	} else {
		b.WriteString(p.stage)
	}
	b.WriteString(" (")
	if p.stage == stageCompile || p.stage == stageLink {
		if p.objects <= p.expect {
			fmt.Fprintf(&b, "CC %d/%d objects, ", p.objects, p.expect)
		} else {
			fmt.Fprintf(&b, "CC %d objects, ", p.objects)
		}
	}
	fmt.Fprintf(&b, "%s elapsed", shortDuration(elapsed))
	switch left := p.left(); {
	case p.stage == stageLink:
	case left > 0:
		fmt.Fprintf(&b, ", about %s left", shortDuration(left))
	default:
		b.WriteString("; " + firstBuildHint)
	}
	b.WriteString(")")
	return b.String()
}

// left estimates the compile's remaining time from its rate so far, or 0
// while there is too little to go on (or it is past the estimate).
// Preconditions: p.mu is held.
func (p *buildProgress) left() time.Duration {
	if p.stage != stageCompile || p.objects < p.expect/10 || p.objects >= p.expect {
		return 0
	}
	per := p.now().Sub(p.since) / time.Duration(p.objects)
	left := per * time.Duration(p.expect-p.objects)
	switch {
	case left >= time.Minute:
		return left.Round(time.Minute)
	default:
		return left.Round(10 * time.Second)
	}
}

// shortDuration spells d as Duration does, without the zero units at its
// end ("4m", not "4m0s").
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// show writes the progress line. Preconditions: p.mu is held.
func (p *buildProgress) show() {
	if p.w == nil || p.start.IsZero() {
		return
	}
	if p.redraw {
		fmt.Fprintf(p.w, "\r\x1b[K%s", p.status())
		p.drawn = true
		return
	}
	fmt.Fprintln(p.w, p.status())
}

package supervisor

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vm"
)

// logDir returns a VM directory with empty raw output files, as QEMU
// leaves them.
func logDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{vm.StdoutFile, vm.StderrFile} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startTest starts a collector on dir and closes it with the test.
func startTest(t *testing.T, dir string, cfg options.LogConfig) *collector {
	t.Helper()
	c, err := startCollector(dir, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("startCollector: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

var smallLogs = options.LogConfig{MaxSize: 4096, MaxFiles: 3}

// appendRaw appends data to a raw output file, as the guest's writes do.
func appendRaw(t *testing.T, dir, stream, data string) {
	t.Helper()
	name := vm.StdoutFile
	if stream == "stderr" {
		name = vm.StderrFile
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, c *collector) []LogEntry {
	t.Helper()
	entries, live, cancel, err := c.Read(LogQuery{Tail: -1}, false)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	defer cancel()
	if live != nil {
		t.Errorf("Read without Follow returned a channel")
	}
	return entries
}

type line struct{ stream, text string }

func linesOf(entries []LogEntry) []line {
	out := []line{}
	for _, e := range entries {
		out = append(out, line{e.Stream, e.Line})
	}
	return out
}

func TestCollectorLines(t *testing.T) {
	type write struct{ stream, data string }
	tests := []struct {
		name   string
		writes []write // each followed by a Sync
		want   []line
	}{
		{
			name:   "one line",
			writes: []write{{"stdout", "hello\n"}},
			want:   []line{{"stdout", "hello\n"}},
		},
		{
			name:   "several lines in one write",
			writes: []write{{"stdout", "a\nb\n\nc\n"}},
			want:   []line{{"stdout", "a\n"}, {"stdout", "b\n"}, {"stdout", "\n"}, {"stdout", "c\n"}},
		},
		{
			name:   "interleaved streams",
			writes: []write{{"stdout", "out 1\n"}, {"stderr", "err 1\n"}, {"stdout", "out 2\n"}, {"stderr", "err 2\nerr 3\n"}},
			want:   []line{{"stdout", "out 1\n"}, {"stderr", "err 1\n"}, {"stdout", "out 2\n"}, {"stderr", "err 2\n"}, {"stderr", "err 3\n"}},
		},
		{
			name:   "bytes kept as written",
			writes: []write{{"stdout", "crlf\r\n"}, {"stdout", "tab\tand \"quotes\" and ünïcode\n"}},
			want:   []line{{"stdout", "crlf\r\n"}, {"stdout", "tab\tand \"quotes\" and ünïcode\n"}},
		},
		{
			name:   "line completed across writes",
			writes: []write{{"stderr", "par"}, {"stderr", "tial\nnext\n"}},
			want:   []line{{"stderr", "partial\n"}, {"stderr", "next\n"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := logDir(t)
			c := startTest(t, dir, smallLogs)
			for _, w := range tt.writes {
				appendRaw(t, dir, w.stream, w.data)
				c.Sync()
			}
			entries := readAll(t, c)
			if got := linesOf(entries); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("entries = %q, want %q", got, tt.want)
			}
			for i, e := range entries {
				if e.Time.IsZero() {
					t.Errorf("entry %d has no time", i)
				}
				if i > 0 && e.Time.Before(entries[i-1].Time) {
					t.Errorf("entry %d time %v before entry %d's %v", i, e.Time, i-1, entries[i-1].Time)
				}
			}
			// Syncing again with nothing new adds nothing.
			c.Sync()
			if n := len(readAll(t, c)); n != len(tt.want) {
				t.Errorf("after an idle Sync: %d entries, want %d", n, len(tt.want))
			}
		})
	}
}

func TestCollectorPartialLine(t *testing.T) {
	dir := logDir(t)
	c := startTest(t, dir, smallLogs)
	appendRaw(t, dir, "stdout", "hel")
	c.Sync()
	if got := readAll(t, c); len(got) != 0 {
		t.Fatalf("a line without its newline was emitted: %q", linesOf(got))
	}
	appendRaw(t, dir, "stdout", "lo\nwor")
	c.Sync()
	if got, want := linesOf(readAll(t, c)), []line{{"stdout", "hello\n"}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("entries = %q, want %q", got, want)
	}
	// The VM ended: its unfinished last line is taken as it is.
	c.VMEnded()
	want := []line{{"stdout", "hello\n"}, {"stdout", "wor"}}
	if got := linesOf(readAll(t, c)); !reflect.DeepEqual(got, want) {
		t.Fatalf("after VMEnded entries = %q, want %q", got, want)
	}
	// The next run's output starts a new line, and "wor" is not taken twice.
	appendRaw(t, dir, "stdout", "ld\n")
	c.Sync()
	c.VMEnded()
	want = append(want, line{"stdout", "ld\n"})
	if got := linesOf(readAll(t, c)); !reflect.DeepEqual(got, want) {
		t.Fatalf("after the next run entries = %q, want %q", got, want)
	}
}

func TestCollectorLongLine(t *testing.T) {
	a := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name   string
		writes []string // each followed by a Sync
		ended  bool     // VMEnded after the writes
		want   []string
	}{
		{
			name:   "no newline yet",
			writes: []string{a(20 << 10)},
			want:   []string{a(maxLine)},
		},
		{
			name:   "no newline, VM ended",
			writes: []string{a(20 << 10)},
			ended:  true,
			want:   []string{a(maxLine), a(4 << 10)},
		},
		{
			name:   "no newline, over twice the limit",
			writes: []string{a(40 << 10)},
			want:   []string{a(maxLine), a(maxLine)},
		},
		{
			name:   "exactly the limit with its newline",
			writes: []string{a(maxLine-1) + "\n"},
			want:   []string{a(maxLine-1) + "\n"},
		},
		{
			name:   "newline in the same write",
			writes: []string{a(20<<10) + "\n"},
			want:   []string{a(maxLine), a(4<<10) + "\n"},
		},
		{
			name:   "newline in a later write",
			writes: []string{a(10 << 10), a(10<<10) + "\n"},
			want:   []string{a(maxLine), a(4<<10) + "\n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := logDir(t)
			c := startTest(t, dir, options.LogConfig{MaxSize: 1 << 20, MaxFiles: 2})
			for _, w := range tt.writes {
				appendRaw(t, dir, "stdout", w)
				c.Sync()
			}
			if tt.ended {
				c.VMEnded()
			}
			var got []string
			for _, e := range readAll(t, c) {
				got = append(got, e.Line)
			}
			if !reflect.DeepEqual(got, tt.want) {
				lens := func(s []string) (out []int) {
					for _, x := range s {
						out = append(out, len(x))
					}
					return out
				}
				t.Errorf("entry lengths %v, want %v", lens(got), lens(tt.want))
			}
		})
	}
}

func TestCollectorRotation(t *testing.T) {
	for _, maxFiles := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("max-file=%d", maxFiles), func(t *testing.T) {
			dir := logDir(t)
			cfg := options.LogConfig{MaxSize: 4096, MaxFiles: maxFiles}
			c := startTest(t, dir, cfg)
			const total = 300
			var written []string
			for i := 0; i < total; i += 10 {
				var b strings.Builder
				for j := i; j < i+10; j++ {
					l := fmt.Sprintf("line %04d %s\n", j, strings.Repeat("x", j%40))
					written = append(written, l)
					b.WriteString(l)
				}
				appendRaw(t, dir, "stdout", b.String())
				c.Sync()
			}
			base := filepath.Join(dir, logFile)
			for n := 0; n <= maxFiles; n++ {
				p := base
				if n > 0 {
					p += "." + strconv.Itoa(n)
				}
				st, err := os.Stat(p)
				if n == maxFiles {
					if err == nil {
						t.Errorf("%s exists: more than %d files kept", filepath.Base(p), maxFiles)
					}
					continue
				}
				if err != nil {
					t.Errorf("%s: %v", filepath.Base(p), err)
					continue
				}
				if st.Size() > cfg.MaxSize || st.Size() == 0 {
					t.Errorf("%s is %d bytes, want 1 to %d", filepath.Base(p), st.Size(), cfg.MaxSize)
				}
			}

			entries := readAll(t, c)
			if len(entries) == 0 || len(entries) >= total {
				t.Fatalf("read %d entries of %d written: want the newest, some rotated away", len(entries), total)
			}
			// About (maxFiles-1) full files and a part: at least that many
			// entries of at most ~150 bytes each.
			if min := (maxFiles - 1) * 4096 / 150; len(entries) < min {
				t.Errorf("read %d entries, want at least %d from %d files", len(entries), min, maxFiles)
			}
			tail := written[total-len(entries):]
			for i, e := range entries {
				if e.Line != tail[i] {
					t.Fatalf("entry %d = %q, want %q (the newest lines in order)", i, e.Line, tail[i])
				}
			}

			last, _, _, err := c.Read(LogQuery{Tail: 5}, false)
			if err != nil {
				t.Fatal(err)
			}
			if got := linesOf(last); len(got) != 5 || got[4].text != written[total-1] || got[0].text != written[total-5] {
				t.Errorf("Tail 5 = %q, want the last 5 lines written", got)
			}
		})
	}
}

// writeLogFile writes entries as the collector stores them.
func writeLogFile(t *testing.T, path string, entries []LogEntry, extra string) {
	t.Helper()
	var b []byte
	for _, e := range entries {
		j, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		b = append(append(b, j...), '\n')
	}
	b = append(b, extra...)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCollectorReadQuery(t *testing.T) {
	t0 := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	var all []LogEntry
	for i := range 6 {
		all = append(all, LogEntry{Stream: streams[i%2], Time: at(i), Line: fmt.Sprintf("e%d\n", i)})
	}
	dir := logDir(t)
	// The older half in the rotated file, the newer in the current one,
	// with a torn line that readers skip.
	writeLogFile(t, filepath.Join(dir, logFile+".1"), all[:3], "")
	writeLogFile(t, filepath.Join(dir, logFile), all[3:], `{"stream":"stdout","ti`+"\n")
	c := startTest(t, dir, smallLogs)

	names := func(es []LogEntry) []string {
		out := []string{}
		for _, e := range es {
			out = append(out, strings.TrimSuffix(e.Line, "\n"))
		}
		return out
	}
	tests := []struct {
		name string
		q    LogQuery
		want []string
	}{
		{"all", LogQuery{Tail: -1}, []string{"e0", "e1", "e2", "e3", "e4", "e5"}},
		{"tail 0", LogQuery{Tail: 0}, []string{}},
		{"tail 2", LogQuery{Tail: 2}, []string{"e4", "e5"}},
		{"tail over count", LogQuery{Tail: 100}, []string{"e0", "e1", "e2", "e3", "e4", "e5"}},
		{"since is inclusive", LogQuery{Tail: -1, Since: at(2)}, []string{"e2", "e3", "e4", "e5"}},
		{"since between", LogQuery{Tail: -1, Since: at(2).Add(1)}, []string{"e3", "e4", "e5"}},
		{"until is exclusive", LogQuery{Tail: -1, Until: at(2)}, []string{"e0", "e1"}},
		{"window", LogQuery{Tail: -1, Since: at(1), Until: at(4)}, []string{"e1", "e2", "e3"}},
		{"since then tail", LogQuery{Tail: 1, Since: at(1), Until: at(4)}, []string{"e3"}},
		{"since after all", LogQuery{Tail: -1, Since: at(10)}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries, _, cancel, err := c.Read(tt.q, false)
			if err != nil {
				t.Fatal(err)
			}
			defer cancel()
			if got := names(entries); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Read(%+v) = %v, want %v", tt.q, got, tt.want)
			}
			for _, e := range entries {
				i, _ := strconv.Atoi(strings.TrimSuffix(e.Line, "\n")[1:])
				if !e.Time.Equal(at(i)) || e.Stream != streams[i%2] {
					t.Errorf("entry %q: time %v stream %s, want %v %s", e.Line, e.Time, e.Stream, at(i), streams[i%2])
				}
			}
		})
	}

	// New lines go after the stored ones.
	appendRaw(t, dir, "stderr", "new\n")
	c.Sync()
	got := readAll(t, c)
	if len(got) != 7 || got[6].Line != "new\n" || got[6].Stream != "stderr" {
		t.Errorf("after a new line: %q", linesOf(got))
	}
}

func TestCollectorResume(t *testing.T) {
	dir := logDir(t)
	c, err := startCollector(dir, smallLogs, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	appendRaw(t, dir, "stdout", "one\ntwo\n")
	appendRaw(t, dir, "stderr", "err one\nunfin")
	c.Sync()
	c.Close()
	c.Close() // idempotent
	if _, err := os.Stat(filepath.Join(dir, offsetsFile)); err != nil {
		t.Fatalf("no offsets saved: %v", err)
	}

	// Output written while no collector runs (the daemon was down).
	appendRaw(t, dir, "stdout", "three\n")
	appendRaw(t, dir, "stderr", "ished\n")
	c = startTest(t, dir, smallLogs)
	want := []line{
		{"stdout", "one\n"}, {"stdout", "two\n"}, {"stderr", "err one\n"},
		{"stdout", "three\n"}, {"stderr", "unfinished\n"},
	}
	if got := linesOf(readAll(t, c)); !reflect.DeepEqual(got, want) {
		t.Fatalf("after resume entries = %q, want %q", got, want)
	}

	// An unfinished line flushed at the VM's end is not taken again either.
	appendRaw(t, dir, "stdout", "last words")
	c.VMEnded()
	c.Close()
	c = startTest(t, dir, smallLogs)
	want = append(want, line{"stdout", "last words"})
	if got := linesOf(readAll(t, c)); !reflect.DeepEqual(got, want) {
		t.Fatalf("after a second resume entries = %q, want %q", got, want)
	}
}

func TestStartCollectorNeedsRawFiles(t *testing.T) {
	dir := t.TempDir()
	c, err := startCollector(dir, smallLogs, slog.New(slog.DiscardHandler))
	if err == nil {
		c.Close()
		t.Fatal("startCollector succeeded without stdout.log and stderr.log")
	}
}

// recv takes what is already in ch, without waiting: Sync hands entries
// to followers before it returns.
func recv(t *testing.T, ch <-chan LogEntry) (e LogEntry, open, ready bool) {
	t.Helper()
	select {
	case e, open = <-ch:
		return e, open, true
	default:
		return LogEntry{}, true, false
	}
}

func TestCollectorFollow(t *testing.T) {
	dir := logDir(t)
	c := startTest(t, dir, smallLogs)
	appendRaw(t, dir, "stdout", "before\n")
	c.Sync()

	entries, live, cancel, err := c.Read(LogQuery{Tail: -1, Follow: true}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	if got := linesOf(entries); len(got) != 1 || got[0].text != "before\n" {
		t.Fatalf("stored entries = %q, want the line before", got)
	}
	if _, _, ready := recv(t, live); ready {
		t.Fatal("follower got something before any new output")
	}
	appendRaw(t, dir, "stdout", "after 1\n")
	appendRaw(t, dir, "stderr", "after 2\n")
	c.Sync()
	for _, want := range []line{{"stdout", "after 1\n"}, {"stderr", "after 2\n"}} {
		e, open, ready := recv(t, live)
		if !ready || !open {
			t.Fatalf("follower: no entry (ready %v, open %v), want %q", ready, open, want)
		}
		if (line{e.Stream, e.Line}) != want || e.Time.IsZero() {
			t.Errorf("follower got %+v, want %q with a time", e, want)
		}
	}
	// A VM end that a restart follows keeps followers.
	appendRaw(t, dir, "stdout", "unfinished")
	c.VMEnded()
	if e, open, ready := recv(t, live); !ready || !open || e.Line != "unfinished" {
		t.Fatalf("follower after VMEnded: %+v open %v ready %v", e, open, ready)
	}
	c.EndFollowers()
	if _, open, ready := recv(t, live); !ready || open {
		t.Fatalf("after EndFollowers the channel is not closed (ready %v, open %v)", ready, open)
	}
	cancel() // after EndFollowers: no double close
	// Output after the followers ended goes to the file only.
	appendRaw(t, dir, "stdout", "later\n")
	c.Sync()
	if n := len(readAll(t, c)); n != 5 {
		t.Errorf("%d entries stored, want 5", n)
	}
}

func TestCollectorFollowCancel(t *testing.T) {
	dir := logDir(t)
	c := startTest(t, dir, smallLogs)
	_, a, cancelA, err := c.Read(LogQuery{Tail: -1, Follow: true}, true)
	if err != nil {
		t.Fatal(err)
	}
	_, b, cancelB, err := c.Read(LogQuery{Tail: -1, Follow: true}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer cancelB()
	cancelA()
	cancelA() // idempotent
	if _, open, ready := recv(t, a); !ready || open {
		t.Fatalf("cancelled channel not closed (ready %v, open %v)", ready, open)
	}
	// Sending to a cancelled follower would panic; the other still gets it.
	appendRaw(t, dir, "stdout", "x\n")
	c.Sync()
	if e, open, ready := recv(t, b); !ready || !open || e.Line != "x\n" {
		t.Fatalf("remaining follower: %+v open %v ready %v", e, open, ready)
	}
	c.mu.Lock()
	n := len(c.subs)
	c.mu.Unlock()
	if n != 1 {
		t.Errorf("%d subscriptions, want 1 after a cancel", n)
	}
}

func TestCollectorCloseEndsFollowers(t *testing.T) {
	dir := logDir(t)
	c := startTest(t, dir, smallLogs)
	appendRaw(t, dir, "stdout", "kept\n")
	c.Sync()
	_, live, cancel, err := c.Read(LogQuery{Tail: -1, Follow: true}, true)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, open, ready := recv(t, live); !ready || open {
		t.Fatalf("after Close the channel is not closed (ready %v, open %v)", ready, open)
	}
	cancel() // after Close: no double close

	// After Close, Read still returns what is stored, and no follow.
	appendRaw(t, dir, "stdout", "not taken\n")
	c.Sync()
	entries, live, cancel, err := c.Read(LogQuery{Tail: -1, Follow: true}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	if got := linesOf(entries); len(got) != 1 || got[0].text != "kept\n" {
		t.Errorf("Read after Close = %q, want the stored line only", got)
	}
	if live != nil {
		t.Errorf("Read after Close gave a follow channel")
	}
}

func TestCollectorFollowNotRunning(t *testing.T) {
	dir := logDir(t)
	c := startTest(t, dir, smallLogs)
	appendRaw(t, dir, "stdout", "done\n")
	c.Sync()
	entries, live, cancel, err := c.Read(LogQuery{Tail: -1, Follow: true}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	if len(entries) != 1 {
		t.Errorf("got %d entries, want 1", len(entries))
	}
	if _, open, ready := recv(t, live); !ready || open {
		t.Fatalf("following a VM that is not running: channel not closed (ready %v, open %v)", ready, open)
	}
}

// A follower that does not read is dropped (its channel closed) rather
// than allowed to block the collector.
func TestCollectorDropsSlowFollower(t *testing.T) {
	dir := logDir(t)
	c := startTest(t, dir, options.LogConfig{MaxSize: 1 << 20, MaxFiles: 2})
	_, live, cancel, err := c.Read(LogQuery{Tail: -1, Follow: true}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	const n = 1500
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "%d\n", i)
	}
	appendRaw(t, dir, "stdout", b.String())
	c.Sync()
	got := 0
	for {
		e, open, ready := recv(t, live)
		if !ready {
			t.Fatalf("channel still open after %d entries: a slow follower was not dropped", got)
		}
		if !open {
			break
		}
		if e.Line != strconv.Itoa(got)+"\n" {
			t.Fatalf("entry %d = %q", got, e.Line)
		}
		got++
	}
	if got == 0 || got >= n {
		t.Errorf("follower got %d entries before being dropped, want some but not all %d", got, n)
	}
	if stored := len(readAll(t, c)); stored != n {
		t.Errorf("%d entries stored, want all %d", stored, n)
	}
}

// punchSupported reports whether dir's file system can punch holes.
func punchSupported(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 64<<10) == nil
}

// The collector gives back the disk space of raw output it has taken.
func TestCollectorPunchesConsumedOutput(t *testing.T) {
	dir := logDir(t)
	if !punchSupported(t, dir) {
		t.Skip("the temp dir's file system cannot punch holes; set TMPDIR to ext4, xfs or tmpfs")
	}
	c := startTest(t, dir, options.LogConfig{MaxSize: 1 << 20, MaxFiles: 2})
	const size = 3 << 20
	lineText := strings.Repeat("y", 1023) + "\n"
	appendRaw(t, dir, "stdout", strings.Repeat(lineText, size/len(lineText)))
	c.Sync()
	if n := len(readAll(t, c)); n == 0 {
		t.Fatal("nothing collected")
	}
	st, err := os.Stat(filepath.Join(dir, vm.StdoutFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size {
		t.Errorf("raw file size %d, want %d (holes keep the size)", st.Size(), size)
	}
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > size/2 {
		t.Fatalf("regression: logs.go take: the raw file still uses %d of %d bytes after being taken: it is opened read-only (os.Open), so fallocate(PUNCH_HOLE) fails with EBADF and the error is dropped", used, size)
	}
}

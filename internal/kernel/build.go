package kernel

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// DefaultSource is the kernel source tarball of Debian's linux-source-6.1.
const DefaultSource = "/usr/src/linux-source-6.1.tar.xz"

// sourcePackage is the Debian package that provides DefaultSource.
const sourcePackage = "linux-source-6.1"

// BuildOptions configure Build. The zero value builds the default kernel
// from DefaultSource with one job per CPU.
type BuildOptions struct {
	Name   string // store name; "" means DefaultName
	Source string // source tarball; "" means DefaultSource
	Jobs   int    // make -j; 0 means runtime.NumCPU()
	Force  bool   // rebuild even when the cached kernel matches
	// Log gets the build's whole output as it comes (make's and the
	// compiler's); nil: it goes only to the build log file (BuildLog).
	Log io.Writer
	// Progress, if set, gets what the build is doing and how far it is
	// ("kernel: compiling (CC 812/1540 objects, 2m10s elapsed, about 3m
	// left)"): a line at each stage and every 10 s, or, with Redraw (a
	// terminal), one line redrawn every second.
	Progress io.Writer
	Redraw   bool
}

// BuildLog is where Build keeps the whole output of the latest build of
// the kernel name, kept after it ends; a failed build's error quotes its
// last lines.
func (s *Store) BuildLog(name string) string {
	return filepath.Join(s.dir, name+".build.log")
}

// logTailLines is how many of the build log's last lines a failed
// build's error quotes.
const logTailLines = 25

// Validate reports whether o can be used.
func (o *BuildOptions) Validate() error {
	if o.Name != "" {
		if err := ValidateName(o.Name); err != nil {
			return err
		}
	}
	if o.Jobs < 0 {
		return fmt.Errorf("invalid job count %d: use 0 (one per CPU) or more", o.Jobs)
	}
	return nil
}

// Build builds a guest kernel from Debian's kernel source with kiln's config
// fragment and stores it. The result is cached by source version and
// fragment hash: when the stored kernel of that name has the same key, Build
// returns it at once (built is false).
func (s *Store) Build(ctx context.Context, o BuildOptions) (k *Kernel, built bool, err error) {
	if err := o.Validate(); err != nil {
		return nil, false, err
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Source == "" {
		o.Source = DefaultSource
	}
	if o.Jobs == 0 {
		o.Jobs = runtime.NumCPU()
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	st, err := os.Stat(o.Source)
	if err != nil {
		return nil, false, fmt.Errorf("kernel source %s not found (install it: apt-get install %s, or run scripts/setup): %w", o.Source, sourcePackage, err)
	}
	version := sourceVersion(o.Source, st)
	key := hashStrings(version, Fragment)
	cur, _ := s.Get(o.Name)
	if cur != nil && cur.Key == key && !o.Force {
		return cur, false, nil
	}
	for _, tool := range []string{"make", "gcc", "flex", "bison", "bc", "tar", "xz"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, false, fmt.Errorf("building a kernel needs %q (apt-get install build-essential flex bison bc xz-utils libelf-dev, or run scripts/setup): %w", tool, err)
		}
	}
	tmp, err := s.tempDir(o.Name)
	if err != nil {
		return nil, false, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	src := filepath.Join(tmp, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		return nil, false, fmt.Errorf("creating build dir: %w", err)
	}
	frag := filepath.Join(tmp, "microvm.config")
	if err := os.WriteFile(frag, []byte(Fragment), 0o644); err != nil {
		return nil, false, fmt.Errorf("writing config fragment: %w", err)
	}
	logPath := s.BuildLog(o.Name)
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, false, fmt.Errorf("creating the build log: %w", err)
	}
	defer logFile.Close()
	expect := 0
	if cur != nil {
		expect = cur.Objects // the last build's count, if it recorded one
	}
	prog := newBuildProgress(o.Progress, o.Redraw, expect)
	prog.say("building %q from %s (%s) with %d jobs; the whole output goes to %s", o.Name, filepath.Base(o.Source), version, o.Jobs, logPath)
	prog.begin()
	defer prog.end()
	out := io.MultiWriter(logFile, prog, o.Log)
	run := func(dir string, args ...string) error {
		fmt.Fprintf(out, "+ %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Run(); err != nil {
			logFile.Sync()
			return fmt.Errorf("running %s: %w%s", strings.Join(args, " "), err, logTail(logPath, logTailLines))
		}
		return nil
	}
	prog.setStage(stageUnpack)
	if err := run(src, "tar", "-xf", o.Source, "--strip-components=1"); err != nil {
		return nil, false, fmt.Errorf("unpacking kernel source: %w", err)
	}
	prog.setStage(stageConfigure)
	steps := [][]string{
		{"make", "tinyconfig"},
		{"./scripts/kconfig/merge_config.sh", "-m", ".config", frag},
		{"make", "olddefconfig"},
	}
	for _, step := range steps {
		if err := run(src, step...); err != nil {
			return nil, false, fmt.Errorf("configuring kernel: %w", err)
		}
	}
	if err := checkConfig(filepath.Join(src, ".config"), Fragment); err != nil {
		return nil, false, err
	}
	prog.setStage(stageCompile)
	if err := run(src, "make", fmt.Sprintf("-j%d", o.Jobs), "vmlinux"); err != nil {
		return nil, false, fmt.Errorf("building kernel: %w", err)
	}
	prog.end()
	objects, took := prog.result()
	prog.say("compiled %d objects in %s", objects, took)
	for _, f := range []struct{ from, to string }{{"vmlinux", "vmlinux"}, {".config", "config"}} {
		if err := os.Rename(filepath.Join(src, f.from), filepath.Join(tmp, f.to)); err != nil {
			return nil, false, fmt.Errorf("keeping %s: %w", f.from, err)
		}
	}
	if err := os.RemoveAll(src); err != nil {
		return nil, false, fmt.Errorf("removing build tree: %w", err)
	}
	vst, err := os.Stat(filepath.Join(tmp, "vmlinux"))
	if err != nil {
		return nil, false, fmt.Errorf("checking built kernel: %w", err)
	}
	_, capable, err := kernelACPI(filepath.Join(tmp, "config"), "")
	if err != nil {
		return nil, false, err
	}
	k = &Kernel{
		Name:        o.Name,
		ACPICapable: capable,
		Path:        filepath.Join(s.dir, o.Name, "vmlinux"),
		Origin:      fmt.Sprintf("built from %s %s", sourcePackage, version),
		Key:         key,
		Created:     time.Now().UTC(),
		Size:        vst.Size(),
		Objects:     objects,
	}
	if err := s.install(tmp, k); err != nil {
		return nil, false, err
	}
	return k, true, nil
}

// logTail is the last n lines of the log at path, introduced, for an
// error message; "" when there is nothing to quote.
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const window = 16 << 10 // enough for n compiler lines
	var off int64
	if st, err := f.Stat(); err == nil && st.Size() > window {
		off = st.Size() - window
	}
	b := make([]byte, window)
	m, _ := f.ReadAt(b, off)
	lines := strings.Split(strings.TrimRight(string(b[:m]), "\n"), "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // the first may be cut
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 || lines[0] == "" && len(lines) == 1 {
		return fmt.Sprintf(" (the build log %s is empty)", path)
	}
	return fmt.Sprintf("; the last lines of the build log %s:\n%s", path, strings.Join(lines, "\n"))
}

// sourceVersion names the source: the Debian package version when the
// tarball is the package's, else the tarball's size and modification time.
func sourceVersion(path string, st os.FileInfo) string {
	if path == DefaultSource {
		out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", sourcePackage).Output()
		if err == nil && len(out) > 0 {
			return string(out)
		}
	}
	return fmt.Sprintf("%s:%d:%d", filepath.Base(path), st.Size(), st.ModTime().Unix())
}

// checkConfig verifies that every option the fragment sets has that value in
// the final .config: Kconfig silently drops options whose dependencies are
// unmet, and a kernel missing one of ours fails in ways far from the cause.
func checkConfig(configPath, fragment string) error {
	f, err := os.Open(configPath)
	if err != nil {
		return fmt.Errorf("reading kernel config: %w", err)
	}
	defer f.Close()
	got := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "CONFIG_") {
			got[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading kernel config: %w", err)
	}
	var missing []string
	for _, line := range strings.Split(fragment, "\n") {
		k, want, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		have, set := got[k]
		if want == "n" {
			if set && have != "n" {
				missing = append(missing, fmt.Sprintf("%s=%s (want n)", k, have))
			}
			continue
		}
		if have != want {
			missing = append(missing, fmt.Sprintf("%s=%q (want %s)", k, have, want))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kernel config fragment not applied (unmet dependencies?): %s", strings.Join(missing, ", "))
	}
	return nil
}

package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/kernel"
	"kiln.dev/kiln/internal/testenv"
)

// cloudKernel returns Debian's cloud kernel image and module directory as
// scripts/fetch-test-kernel unpacks them.
func cloudKernel(t *testing.T) (image, modules string) {
	t.Helper()
	dir := filepath.Join(os.Getenv("KILN_TEST_CACHE"), "cloud-kernel")
	if os.Getenv("KILN_TEST_CACHE") == "" {
		dir = "/var/cache/kiln-test/cloud-kernel"
	}
	images, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	if len(images) != 1 || len(mods) != 1 {
		t.Skipf("Debian's cloud kernel is not unpacked in %s: run scripts/fetch-test-kernel", dir)
	}
	return images[0], mods[0]
}

// A distribution kernel with virtio as modules: import picks the modules
// the guest needs with their dependencies, kiln-init loads them (with the
// cmdline's module parameters) and the program runs.
func TestKernelImportBootsDistributionKernelWithModules(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	image, modules := cloudKernel(t)
	r := e.kiln("kernel", "import", "--name", "cloud", "--modules", modules, image)
	if r.code != 0 {
		t.Fatalf("import failed:\n%s", r)
	}
	m := regexp.MustCompile(`\((\d+) modules\)`).FindStringSubmatch(r.stdout)
	if m == nil || m[1] == "0" {
		t.Fatalf("import took no modules:\n%s", r)
	}
	r = e.kiln("kernel", "ls")
	if !regexp.MustCompile(`(?m)^cloud\s+\S+\s+[1-9]\d*\s`).MatchString(r.stdout) {
		t.Errorf("kernel ls does not list cloud with its modules:\n%s", r)
	}
	r = e.kiln("run", "--rm", "--kernel", "cloud", e.hello(), "-exit", "4")
	if r.code != 4 {
		t.Fatalf("want exit 4 from the program on the imported kernel:\n%s", r)
	}
	version := strings.TrimPrefix(filepath.Base(image), "vmlinuz-")
	if !strings.Contains(r.stdout, "(kernel "+version+",") {
		t.Errorf("the program did not run on kernel %s:\n%s", version, r)
	}
}

func TestKernelImportRejectsNonKernel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	junk := filepath.Join(t.TempDir(), "vmlinuz-junk")
	if err := os.WriteFile(junk, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.kiln("kernel", "import", "--name", "junk", junk)
	if r.code != 125 || !strings.Contains(r.stderr, "is not a kernel image") {
		t.Fatalf("want exit 125 and a clear error:\n%s", r)
	}
	ents, _ := os.ReadDir(filepath.Join(e.root, "kernels"))
	if len(ents) != 0 {
		t.Errorf("a failed import left %d entries in the kernel store", len(ents))
	}
}

// The default kernel is cached by source version and config fragment: a
// second build with nothing changed does nothing. The build runs in a root
// of its own, never the default one: that root's store gets the record
// (kernel.json) of the kernel scripts/setup built in the default root,
// whose image it names read-only. Were the cache stale, the rebuild would
// land in the test's root.
func TestKernelBuildIsCached(t *testing.T) {
	testenv.NeedVM(t)
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	testKernel(t) // skips when setup has not built it
	if os.Getenv("KILN_TEST_KERNEL") != "" {
		t.Skip("KILN_TEST_KERNEL is set: the default root's kernel is not the one under test")
	}
	record, err := os.ReadFile(filepath.Join(defaultRoot(), "kernels", kernel.DefaultName, "kernel.json"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, root: t.TempDir()}
	dir := filepath.Join(e.root, "kernels", kernel.DefaultName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kernel.json"), record, 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.kiln("kernel", "build", "--quiet")
	if r.code != 0 || !strings.Contains(r.stdout, "up to date") {
		t.Fatalf("want the cached kernel reported up to date:\n%s", r)
	}
}

package vm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"kiln.dev/kiln/internal/testenv"
)

var (
	staticOnce sync.Once
	staticPath string
	staticErr  error
)

// staticProgram builds a tiny Go program with CGO_ENABLED=0 (so statically
// linked, unlike a -race test binary) once per test run.
func staticProgram(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go toolchain not in PATH: cannot build a static test program")
	}
	staticOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-static-*")
		if err != nil {
			staticErr = err
			return
		}
		files := map[string]string{
			"go.mod":  "module hello\n\ngo 1.22\n",
			"main.go": "package main\n\nfunc main() { println(\"hello\") }\n",
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				staticErr = err
				return
			}
		}
		out := filepath.Join(dir, "hello")
		cmd := exec.Command(goBin, "build", "-trimpath", "-o", out, ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=", "GOWORK=off", "GOTOOLCHAIN=local")
		if b, err := cmd.CombinedOutput(); err != nil {
			staticErr = errors.New("go build: " + err.Error() + ": " + string(b))
			return
		}
		staticPath = out
	})
	if staticErr != nil {
		t.Fatalf("building static program: %v", staticErr)
	}
	return staticPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if staticPath != "" {
		os.RemoveAll(filepath.Dir(staticPath))
	}
	os.Exit(code)
}

// elf64 returns a minimal little-endian ELF64 image: a header and the given
// program headers (an optional PT_INTERP naming interp, then one PT_LOAD).
func elf64(typ elf.Type, machine elf.Machine, entry uint64, interp string) []byte {
	le := binary.LittleEndian
	var phdrs [][]byte
	const ehsize, phentsize = 64, 56
	nph := 1
	if interp != "" {
		nph = 2
	}
	dataOff := uint64(ehsize + phentsize*nph)
	ph := func(ptype elf.ProgType, off, size uint64) []byte {
		b := make([]byte, phentsize)
		le.PutUint32(b[0:], uint32(ptype))
		le.PutUint32(b[4:], uint32(elf.PF_R|elf.PF_X))
		le.PutUint64(b[8:], off)
		le.PutUint64(b[16:], 0x400000+off)
		le.PutUint64(b[24:], 0x400000+off)
		le.PutUint64(b[32:], size)
		le.PutUint64(b[40:], size)
		le.PutUint64(b[48:], 0x1000)
		return b
	}
	if interp != "" {
		phdrs = append(phdrs, ph(elf.PT_INTERP, dataOff, uint64(len(interp)+1)))
	}
	phdrs = append(phdrs, ph(elf.PT_LOAD, 0, dataOff+uint64(len(interp)+1)))

	h := make([]byte, ehsize)
	copy(h, "\x7fELF")
	h[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	le.PutUint16(h[16:], uint16(typ))
	le.PutUint16(h[18:], uint16(machine))
	le.PutUint32(h[20:], uint32(elf.EV_CURRENT))
	le.PutUint64(h[24:], entry)
	le.PutUint64(h[32:], ehsize) // e_phoff
	le.PutUint16(h[52:], ehsize)
	le.PutUint16(h[54:], phentsize)
	le.PutUint16(h[56:], uint16(nph))
	le.PutUint16(h[58:], 64) // e_shentsize
	out := append(h, bytes.Join(phdrs, nil)...)
	if interp != "" {
		out = append(out, interp...)
		out = append(out, 0)
	}
	return out
}

// elf32 returns a minimal ELF32 header with no program headers.
func elf32(machine elf.Machine) []byte {
	le := binary.LittleEndian
	h := make([]byte, 52)
	copy(h, "\x7fELF")
	h[elf.EI_CLASS] = byte(elf.ELFCLASS32)
	h[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	le.PutUint16(h[16:], uint16(elf.ET_EXEC))
	le.PutUint16(h[18:], uint16(machine))
	le.PutUint32(h[20:], uint32(elf.EV_CURRENT))
	le.PutUint32(h[24:], 0x8048000)
	le.PutUint16(h[40:], 52)
	le.PutUint16(h[42:], 32)
	le.PutUint16(h[46:], 40)
	return h
}

func TestCheckProgram(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    func(t *testing.T) string
		wantErr string // "" means the program is accepted
	}{
		{"static Go program", staticProgram, ""},
		{"static executable", func(*testing.T) string { return write("exec", elf64(elf.ET_EXEC, elf.EM_X86_64, 0x401000, "")) }, ""},
		{"static PIE", func(*testing.T) string { return write("spie", elf64(elf.ET_DYN, elf.EM_X86_64, 0x1000, "")) }, ""},
		{"dynamically linked", func(*testing.T) string {
			return write("dyn", elf64(elf.ET_EXEC, elf.EM_X86_64, 0x401000, "/lib/ld-musl-x86_64.so.1"))
		}, "/lib/ld-musl-x86_64.so.1"},
		{"dynamic PIE", func(*testing.T) string {
			return write("dpie", elf64(elf.ET_DYN, elf.EM_X86_64, 0x1000, "/lib64/ld-linux-x86-64.so.2"))
		}, "dynamically linked (needs /lib64/ld-linux-x86-64.so.2)"},
		{"host /bin/ls", func(t *testing.T) string {
			if _, err := os.Stat("/bin/ls"); err != nil {
				t.Skip("no /bin/ls")
			}
			return "/bin/ls"
		}, "ld-linux-x86-64.so.2"},
		{"shared library", func(*testing.T) string { return write("lib.so", elf64(elf.ET_DYN, elf.EM_X86_64, 0, "")) }, "shared library"},
		{"object file", func(*testing.T) string { return write("x.o", elf64(elf.ET_REL, elf.EM_X86_64, 0, "")) }, "not an executable"},
		{"core file", func(*testing.T) string { return write("core", elf64(elf.ET_CORE, elf.EM_X86_64, 0, "")) }, "not an executable"},
		{"arm64", func(*testing.T) string { return write("arm", elf64(elf.ET_EXEC, elf.EM_AARCH64, 0x401000, "")) }, "not x86-64"},
		{"i386", func(*testing.T) string { return write("i386", elf32(elf.EM_386)) }, "not x86-64"},
		{"x86-64 machine in a 32-bit ELF", func(*testing.T) string { return write("x32", elf32(elf.EM_X86_64)) }, "not x86-64"},
		{"static Go program patched to arm64", func(t *testing.T) string {
			b, err := os.ReadFile(staticProgram(t))
			if err != nil {
				t.Fatal(err)
			}
			binary.LittleEndian.PutUint16(b[18:], uint16(elf.EM_AARCH64))
			return write("patched", b)
		}, "EM_AARCH64"},
		{"text file", func(*testing.T) string { return write("script.sh", []byte("#!/bin/sh\necho hi\n")) }, "not an ELF"},
		{"just the ELF magic", func(*testing.T) string { return write("magic", []byte("\x7fELF")) }, "not an ELF"},
		{"empty file", func(*testing.T) string { return write("empty", nil) }, "not an ELF"},
		{"directory", func(t *testing.T) string { return t.TempDir() }, "not a regular file"},
		{"missing", func(t *testing.T) string { return filepath.Join(t.TempDir(), "missing") }, "missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.path(t)
			err := CheckProgram(p)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckProgram(%s) = %v, want nil", p, err)
				}
				return
			}
			testenv.CheckInvalid(t, err, tt.wantErr, p)
		})
	}
}

// TestCheckProgramMissingSaysWhy: "program ./x: invalid argument" does not
// tell the user the file is not there.
func TestCheckProgramMissingSaysWhy(t *testing.T) {
	p := filepath.Join(t.TempDir(), "hello")
	err := CheckProgram(p)
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("CheckProgram(missing) = %v, want it to say the file does not exist", err)
	}
}

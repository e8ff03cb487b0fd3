package vm

import (
	"debug/elf"
	"fmt"
	"os"

	"kiln.dev/kiln/internal/errdefs"
)

// CheckProgram reports whether the host file at path can run as a bare
// program in a VM: an x86-64 Linux ELF executable that needs no dynamic
// loader, since a bare VM holds nothing but the program and kiln-init.
func CheckProgram(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return errdefs.Mark(fmt.Errorf("program: %w", err), errdefs.ErrInvalidArgument)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("program %s is not a regular file: %w", path, errdefs.ErrInvalidArgument)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("program %s is not an ELF executable (kiln runs a static x86-64 Linux program): %w", path, errdefs.ErrInvalidArgument)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		return fmt.Errorf("program %s is built for %s, not x86-64: %w", path, f.Machine, errdefs.ErrInvalidArgument)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("program %s is an ELF %s, not an executable: %w", path, f.Type, errdefs.ErrInvalidArgument)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp := make([]byte, p.Filesz)
			n, _ := p.ReadAt(interp, 0)
			return fmt.Errorf("program %s is dynamically linked (needs %s), which a bare VM does not have: link it statically (e.g. CGO_ENABLED=0 or -static): %w",
				path, trimNUL(interp[:n]), errdefs.ErrInvalidArgument)
		}
	}
	if f.Type == elf.ET_DYN && f.Entry == 0 {
		return fmt.Errorf("program %s is a shared library, not an executable: %w", path, errdefs.ErrInvalidArgument)
	}
	return nil
}

func trimNUL(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

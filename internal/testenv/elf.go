package testenv

import (
	"bytes"
	"crypto/rand"
	"debug/elf"
	"encoding/binary"
	"testing"
)

// TinyELF is an x86-64 executable of size bytes: an ELF header, a PT_LOAD
// (and a PT_INTERP when dynamic), then random bytes: enough for kiln to
// take it for a static or dynamic program, never run.
func TinyELF(t testing.TB, size int, dynamic bool) []byte {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b[64+2*56:])
	h := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Entry: 0x400000, Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: 1,
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	progs := []elf.Prog64{{Type: uint32(elf.PT_LOAD), Flags: uint32(elf.PF_R | elf.PF_X), Vaddr: 0x400000, Filesz: uint64(size), Memsz: uint64(size), Align: 0x1000}}
	if dynamic {
		progs = append(progs, elf.Prog64{Type: uint32(elf.PT_INTERP), Off: 64, Filesz: 28})
		h.Phnum = 2
	}
	var buf bytes.Buffer
	binary.Write(&buf, binary.LittleEndian, &h)
	for _, p := range progs {
		binary.Write(&buf, binary.LittleEndian, &p)
	}
	copy(b, buf.Bytes())
	return b
}

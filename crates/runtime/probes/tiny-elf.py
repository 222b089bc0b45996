#!/usr/bin/env python3
"""Writes a minimal static ELF64 executable: one PT_LOAD segment holding CODE, entered at its
start. For architectures without Debian cross binutils (loongarch64) and for the MIPS probes.

    tiny-elf.py OUT E_MACHINE little|big E_FLAGS CODE_HEX
"""
import struct, sys

out, machine, endian, flags, code = sys.argv[1:]
e = "<" if endian == "little" else ">"
code = bytes.fromhex(code)
base, ehsize, phsize = 0x10000, 64, 56
entry = base + ehsize + phsize
ident = b"\x7fELF" + bytes([2, 1 if endian == "little" else 2, 1, 0]) + bytes(8)
header = ident + struct.pack(e + "HHIQQQIHHHHHH", 2, int(machine, 0), 1, entry, ehsize, 0,
                             int(flags, 0), ehsize, phsize, 1, 0, 0, 0)
size = ehsize + phsize + len(code)
phdr = struct.pack(e + "IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
open(out, "wb").write(header + phdr + code)

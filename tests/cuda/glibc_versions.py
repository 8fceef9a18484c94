#!/usr/bin/env python3
"""glibc_versions.py — what glibc a carried ELF file needs, and a way around a few too-new symbols
(standard library only; used by prepare_carry.sh and tests/cli_cuda_dryrun.sh).

  glibc_versions.py report MAX FILE...   one line per file: "FILE max=2.34 private=0 newer=sym@GLIBC_2.36,..."
                                         (newer: the symbols bound to a GLIBC_x.y above MAX); exit 0
  glibc_versions.py weaken MAX FILE      mark FILE's needs of GLIBC_x.y above MAX weak (VER_FLG_WEAK in
                                         .gnu.version_r), in place, and print the symbols bound to them

A glibc older than a library's GLIBC_x.y refuses to load it ("version `GLIBC_2.36' not found"). A weak
version need is not fatal (glibc's dl-version.c): the loader then binds those symbols to whichever
object of the global scope defines them with that version, here tests/cuda/glibc_compat.c, preloaded
(LD_PRELOAD) by run.sh. prepare_carry.sh weakens only needs whose every symbol glibc_compat.c provides
and refuses the carry otherwise."""
import struct
import sys

SHT_DYNSYM, SHT_VERNEED, SHT_VERSYM = 11, 0x6FFFFFFE, 0x6FFFFFFF
VER_FLG_WEAK = 2


def vkey(name):
    return tuple(int(x) for x in name[len("GLIBC_"):].split("."))


def is_glibc_version(name):
    return name.startswith("GLIBC_") and name[6:7].isdigit()


class Elf:
    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = bytearray(f.read())
        d = self.data
        if d[:4] != b"\x7fELF" or d[4] != 2 or d[5] != 1:
            raise ValueError("%s: not a little-endian ELF64 file" % path)
        shoff, = struct.unpack_from("<Q", d, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", d, 0x3A)
        self.sections = []
        for i in range(shnum):
            name, typ, flags, addr, off, size, link, info, align, entsize = struct.unpack_from(
                "<IIQQQQIIQQ", d, shoff + i * shentsize)
            self.sections.append({"type": typ, "off": off, "size": size, "link": link, "entsize": entsize})

    def cstr(self, sec, off):
        s = self.sections[sec]["off"] + off
        return self.data[s:self.data.index(b"\0", s)].decode()

    def section(self, typ):
        for i, s in enumerate(self.sections):
            if s["type"] == typ:
                return i, s
        return None, None

    def verneed(self):
        """[(offset of the Vernaux entry, file, version name, flags, index)]"""
        i, s = self.section(SHT_VERNEED)
        out = []
        if s is None:
            return out
        off = s["off"]
        while True:
            vn_version, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", self.data, off)
            a = off + vn_aux
            for _ in range(vn_cnt):
                vna_hash, vna_flags, vna_other, vna_name, vna_next = struct.unpack_from("<IHHII", self.data, a)
                out.append((a, self.cstr(s["link"], vn_file), self.cstr(s["link"], vna_name), vna_flags,
                            vna_other & 0x7FFF))
                if not vna_next:
                    break
                a += vna_next
            if not vn_next:
                break
            off += vn_next
        return out

    def undefined_by_index(self):
        """{version index: [undefined dynamic symbols bound to it]}"""
        di, dyn = self.section(SHT_DYNSYM)
        vi, vs = self.section(SHT_VERSYM)
        out = {}
        if dyn is None or vs is None:
            return out
        for k in range(dyn["size"] // 24):
            st_name, st_info, st_other, st_shndx = struct.unpack_from("<IBBH", self.data, dyn["off"] + 24 * k)
            if st_shndx != 0 or k == 0:
                continue
            ndx, = struct.unpack_from("<H", self.data, vs["off"] + 2 * k)
            out.setdefault(ndx & 0x7FFF, []).append(self.cstr(dyn["link"], st_name))
        return out


def analyse(path, limit):
    e = Elf(path)
    need = e.verneed()
    syms = e.undefined_by_index()
    versions = [n for _, _, n, _, _ in need if is_glibc_version(n)]
    private = sum(1 for _, _, n, _, _ in need if n == "GLIBC_PRIVATE")
    newer = [(a, n, flags, syms.get(ndx, [])) for a, _, n, flags, ndx in need
             if is_glibc_version(n) and vkey(n) > limit]
    top = max(versions, key=vkey)[6:] if versions else "none"
    return e, top, private, newer


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("report", "weaken"):
        sys.exit(__doc__)
    limit = vkey("GLIBC_" + sys.argv[2])
    if sys.argv[1] == "report":
        for path in sys.argv[3:]:
            try:
                e, top, private, newer = analyse(path, limit)
            except (ValueError, OSError, struct.error) as err:
                print("%s error=%s" % (path, err))
                continue
            desc = ",".join("%s@%s%s" % (s, n, "(weak)" if flags & VER_FLG_WEAK else "")
                            for _, n, flags, ss in newer for s in (ss or ["?"]))
            print("%s max=%s private=%d newer=%s" % (path, top, private, desc or "-"))
        return
    path = sys.argv[3]
    e, top, private, newer = analyse(path, limit)
    for a, n, flags, ss in newer:
        struct.pack_into("<H", e.data, a + 4, flags | VER_FLG_WEAK)
        for s in ss:
            print("%s@%s" % (s, n))
    with open(path, "r+b") as f:
        f.write(e.data)


if __name__ == "__main__":
    main()

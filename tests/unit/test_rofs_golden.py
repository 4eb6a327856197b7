"""ROFS and MBR bytes against the worked examples of osv-image-format.md."""

from __future__ import annotations

import io
import struct

from capstan.image import mbr, rofs, rofs_reader, tree
from capstan.image.rofs import DirEntry, FileEntry, SymlinkEntry

HELLO = bytes(1000)


def example_entries() -> list[rofs.Entry]:
    """The input of section 6.8, in its order."""
    return [
        FileEntry("/etc/hosts", 30, data=tree.HOSTS),
        SymlinkEntry("/etc/mnttab", "/proc/mounts"),
        FileEntry("/etc/fstab", 235, data=tree.FSTAB_ROFS),
        DirEntry("/dev"),
        DirEntry("/proc"),
        DirEntry("/sys"),
        DirEntry("/tmp"),
        FileEntry("/hello", 1000, data=HELLO),
        FileEntry("/run/default", 6, data=b"/hello"),
    ]


def build(entries: list[rofs.Entry]) -> tuple[bytes, rofs.RofsLayout]:
    out = io.BytesIO()
    layout = rofs.write_rofs(entries, out)
    return out.getvalue(), layout


def test_base_files_match_the_spec() -> None:
    assert len(tree.FSTAB_ROFS) == 235
    assert tree.HOSTS == b"127.0.0.1 localhost osv.local\n"
    assert [e.path for e in tree.with_base([])] == [
        "/etc/hosts", "/etc/mnttab", "/etc/fstab", "/dev", "/proc", "/sys", "/tmp"]


def test_section_6_8_superblock() -> None:
    data, layout = build(example_entries())
    assert len(data) == layout.size == 4096
    assert data[:64] == bytes.fromhex(
        "adbeadde00000000" "0100000000000000"
        "0002000000000000" "0600000000000000"
        "0200000000000000" "0b00000000000000"
        "0100000000000000" "0c00000000000000")
    assert not any(data[64:512])


def test_section_6_8_data_blocks() -> None:
    data, _ = build(example_entries())
    assert data[512:542] == tree.HOSTS and not any(data[542:1024])
    assert data[1024:1259] == tree.FSTAB_ROFS and not any(data[1259:1536])
    assert data[1536:2536] == HELLO and not any(data[2536:2560])
    assert data[2560:2566] == b"/hello" and not any(data[2566:3072])


def test_section_6_8_tables() -> None:
    data, _ = build(example_entries())
    assert data[0xC00:0xC20] == bytes.fromhex(
        "0300000000000000" "0500686f73747304" "0000000000000006" "006d6e7474616205")
    names = [(0xC00, 3, b"hosts"), (0xC0F, 4, b"mnttab"), (0xC1F, 5, b"fstab"),
             (0xC2E, 12, b"default"), (0xC3F, 2, b"etc"), (0xC4C, 6, b"dev"),
             (0xC59, 7, b"proc"), (0xC67, 8, b"sys"), (0xC74, 9, b"tmp"),
             (0xC81, 10, b"hello"), (0xC90, 11, b"run")]
    for at, ino, name in names:
        assert struct.unpack_from("<QH", data, at) == (ino, len(name))
        assert data[at + 10:at + 10 + len(name)] == name
    assert data[0xC9D:0xCAB] == b"\x0c\x00/proc/mounts"
    inodes = [struct.unpack_from("<4Q", data, 0xCAB + 32 * i) for i in range(12)]
    assert inodes == [
        (0x4000, 1, 4, 7), (0x4000, 2, 0, 3), (0x8000, 3, 1, 30), (0xA000, 4, 0, 1),
        (0x8000, 5, 2, 235), (0x4000, 6, 3, 0), (0x4000, 7, 3, 0), (0x4000, 8, 3, 0),
        (0x4000, 9, 3, 0), (0x8000, 10, 3, 1000), (0x4000, 11, 3, 1), (0x8000, 12, 5, 6)]
    assert not any(data[0xE2B:])


def test_exact_multiple_tables_get_an_extra_zero_block() -> None:
    # 1 dir entry "f" (11 bytes) + 2 inodes (64) = 75; pad names to reach 512 exactly.
    name = "n" * (512 - 10 - 64)
    data, layout = build([FileEntry("/" + name, 0, data=b"")])
    (first, count) = struct.unpack_from("<2Q", data, 24)
    assert (first, count) == (1, 1)
    assert layout.size == len(data) == 512 * 3


def test_empty_files_take_no_block() -> None:
    data, layout = build([FileEntry("/a", 0, data=b""), FileEntry("/b", 3, data=b"abc")])
    assert layout.data_blocks == 1
    inodes = [struct.unpack_from("<4Q", data, 1024 + 2 * 11 + 32 * i) for i in range(3)]
    assert inodes[1][2:] == (1, 0) and inodes[2][2:] == (1, 3)


def test_later_value_wins_and_keeps_first_position() -> None:
    entries = [FileEntry("/a", 1, data=b"1"), FileEntry("/b", 1, data=b"2"),
               FileEntry("/a", 1, data=b"3")]
    data, _ = build(entries)
    reader = rofs_reader.RofsReader(io.BytesIO(data))
    assert [i.path for i in reader.walk()] == ["/", "/a", "/b"]
    assert reader.read(reader.lookup("/a")) == b"3"


def test_non_ascii_names_use_byte_lengths() -> None:
    data, _ = build([FileEntry("/café", 2, data=b"ok"), SymlinkEntry("/l", "/café")])
    reader = rofs_reader.RofsReader(io.BytesIO(data))
    assert reader.read(reader.lookup("/café")) == b"ok"
    assert reader.readlink(reader.lookup("/l")) == "/café"
    assert struct.unpack_from("<QH", data, 1024)[1] == len("café".encode())


def test_mbr_entry_of_section_14() -> None:
    assert mbr.partition_entry(4194304, 4096) == bytes.fromhex(
        "008203008382" "0b00" "00200000" "08000000")
    assert mbr.partition_entry(4194304, 8704) == bytes.fromhex(
        "008203008382" "1400" "00200000" "11000000")


def test_chs_uses_osv_packing() -> None:
    assert mbr.chs(20000) == (1, 62, 30)
    entry = mbr.partition_entry(512, 20000 * 512 - 512)
    assert entry[5:8] == bytes.fromhex("3e5e00")
    assert mbr.chs(10**9) == (1023, 254, 63)


def test_read_partition_skips_zero_chs() -> None:
    sector = bytearray(512)
    assert mbr.read_partition(bytes(sector), 2) is None
    mbr.set_partition(sector, 2, 4194304, 4096)
    part = mbr.read_partition(bytes(sector), 2)
    assert part is not None and (part.start, part.size) == (4194304, 4096)

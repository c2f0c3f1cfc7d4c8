"""Mapping classification, including the ELF program-header check for bss."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from planner.capture.procfs import parse_maps
from planner.capture.vma import LoadSegment, cached_bss_segments, classify, read_bss_segments
from planner.trace.schema import VMA_KINDS

if TYPE_CHECKING:
    from conftest import FakeProc

PT_LOAD, PF_X, PF_W, PF_R = 1, 1, 2, 4


def _one(line: str, **smaps: str) -> str | None:
    text = line + "\n" + "".join(f"{k}: {v}\n" for k, v in smaps.items())
    (e,) = parse_maps(text)
    return classify(e, None, lambda path: ())


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("00010000-00020000 rw-p 00000000 00:00 0 [heap]", "heap"),
        ("7ffc0000-7ffd0000 rw-p 00000000 00:00 0 [stack]", "stack"),
        ("7f000000-7f100000 rw-p 00000000 00:00 0 ", "anon"),
        ("7f000000-7f100000 r--p 00000000 00:00 0 ", "anon"),
        ("7f000000-7f100000 rw-p 00000000 00:00 0 [anon:jemalloc]", "anon_named"),
        ("7f000000-7f001000 rw-p 00002000 08:01 99 /usr/lib/libc.so.6", "file_data"),
        ("7f000000-7f001000 r--p 00001000 08:01 99 /usr/lib/libc.so.6", "file_relro"),
        ("7f000000-7f001000 r-xp 00000000 08:01 99 /usr/lib/libc.so.6", "file_text"),
        ("7f000000-7f001000 --xp 00000000 08:01 99 /usr/lib/xonly.so", "file_text"),
        ("7f000000-7f001000 rw-p 00000000 00:05 7 /dev/zero (deleted)", "file_data"),
        # skipped: shared, PROT_NONE, special
        ("7f000000-7f100000 rw-s 00000000 00:05 7 /dev/shm/x", None),
        ("7f000000-7f100000 rw-s 00000000 00:01 7 /SYSV00000000 (deleted)", None),
        ("7f000000-7f100000 ---p 00000000 00:00 0 ", None),
        ("7f000000-7f100000 ---p 00000000 08:01 99 /usr/lib/libc.so.6", None),
        ("7fff0000-7fff2000 r--p 00000000 00:00 0 [vvar]", None),
        ("7fff0000-7fff2000 r--p 00000000 00:00 0 [vvar_vclock]", None),
        ("7fff2000-7fff4000 r-xp 00000000 00:00 0 [vdso]", None),
        ("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]", None),
        ("7fff2000-7fff4000 r-xp 00000000 00:00 0 [uprobes]", None),
    ],
)
def test_classify(line: str, kind: str | None) -> None:
    assert _one(line) == kind
    assert kind is None or kind in VMA_KINDS


@pytest.mark.parametrize("flag", ["ht", "io", "pf"])
def test_hugetlb_and_pfnmap_mappings_are_skipped(flag: str) -> None:
    line = "7f000000-7f200000 rw-p 00000000 00:0f 5 /anon_hugepage (deleted)"
    assert _one(line, VmFlags=f"rd wr mr {flag}") is None
    assert _one(line, VmFlags="rd wr mr mw me") == "file_data"


def _lib_maps(anon_start: int, anon_end: int, path: str = "/lib/libfake.so") -> str:
    return (
        f"00100000-00102000 r-xp 00000000 08:01 99 {path}\n"
        f"00102000-00104000 rw-p 00002000 08:01 99 {path}\n"
        f"{anon_start:08x}-{anon_end:08x} rw-p 00000000 00:00 0 \n"
    )


def _classify_all(text: str, segments: tuple[LoadSegment, ...]) -> list[str | None]:
    entries = parse_maps(text)
    return [
        classify(e, entries[i - 1] if i else None, lambda path: segments)
        for i, e in enumerate(entries)
    ]


# A writable PT_LOAD whose file part ends at 0x3800 and memory part at 0x7000 (bss 0x3800-0x7000).
RW_SEGMENT = LoadSegment(offset=0x2000, vaddr=0x2000, filesz=0x1800, memsz=0x5000)


def test_bss_glued_to_the_writable_segment() -> None:
    kinds = _classify_all(_lib_maps(0x104000, 0x107000), (RW_SEGMENT,))
    assert kinds == ["file_text", "file_data", "bss"]


def test_anon_glued_to_a_segment_without_bss_is_anon() -> None:
    no_bss = LoadSegment(offset=0x2000, vaddr=0x2000, filesz=0x2000, memsz=0x2000)
    assert _classify_all(_lib_maps(0x104000, 0x105000), (no_bss,))[-1] == "anon"
    assert _classify_all(_lib_maps(0x104000, 0x105000), ())[-1] == "anon"


def test_anon_not_adjacent_to_the_library_is_anon() -> None:
    assert _classify_all(_lib_maps(0x200000, 0x201000), (RW_SEGMENT,))[-1] == "anon"


def test_anon_beyond_the_bss_end_is_anon() -> None:
    """An arena that merely follows a library whose bss ended in its last file page."""
    small_bss = LoadSegment(offset=0x2000, vaddr=0x2000, filesz=0x1800, memsz=0x1900)
    assert _classify_all(_lib_maps(0x104000, 0x105000), (small_bss,))[-1] == "anon"


def test_read_bss_segments_from_elf_headers(fake_proc: FakeProc, tmp_path: Path) -> None:
    elf = fake_proc.write_elf(
        tmp_path / "libfake.so",
        [
            (PT_LOAD, PF_R | PF_X, 0, 0, 0x2000, 0x2000),
            (PT_LOAD, PF_R | PF_W, 0x2000, 0x2000, 0x1800, 0x5000),
            (PT_LOAD, PF_R | PF_W, 0x4000, 0x9000, 0x100, 0x100),  # writable, no bss
            (2, PF_R | PF_W, 0x5000, 0xA000, 0x10, 0x100),  # not PT_LOAD
        ],
    )
    assert read_bss_segments(elf) == (RW_SEGMENT,)
    assert cached_bss_segments(elf) == (RW_SEGMENT,)


def test_read_bss_segments_of_non_elf_files(tmp_path: Path) -> None:
    text = tmp_path / "data.bin"
    text.write_bytes(b"not an elf file at all" * 10)
    assert read_bss_segments(text) == ()
    assert read_bss_segments(tmp_path / "missing") == ()
    assert cached_bss_segments(tmp_path / "missing") == ()


def test_bss_segments_are_cached_by_file_identity(
    fake_proc: FakeProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process sees a library under its own /proc/<pid>/root path: read it once."""
    from planner.capture import vma

    elf = fake_proc.write_elf(
        tmp_path / "a" / "libc.so", [(PT_LOAD, PF_R | PF_W, 0x2000, 0x2000, 1, 2)]
    )
    other = tmp_path / "b" / "libc.so"
    other.parent.mkdir()
    os.link(elf, other)
    calls: list[Path] = []
    real = vma.read_bss_segments
    monkeypatch.setattr(vma, "read_bss_segments", lambda p: calls.append(Path(p)) or real(p))
    assert cached_bss_segments(elf) == cached_bss_segments(other) != ()
    assert len(calls) == 1

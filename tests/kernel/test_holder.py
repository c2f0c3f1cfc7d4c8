"""Holder processes: memory, fork sharing, protocol errors and clean exits (no KSM involved).

These tests spawn processes but never register them with KSM (no ``MADV_MERGEABLE``).
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from planner.kernel.holder import Holder, HolderError


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    # A forked holder's parent ignores SIGCHLD: the kernel reaps the child itself, which is
    # briefly "X" (dead) before its /proc entry goes (its pidfd turned readable at exit).
    return state in ("Z", "X")


def rss_anon_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


def smaps_of_region(pid: int, addr: int) -> str:
    lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    out: list[str] = []
    for line in lines:
        if "-" in line.split(" ", 1)[0] and ":" not in line.split(" ", 1)[0]:
            start = int(line.split("-", 1)[0], 16)
            if out and start != addr:
                break
            if start == addr:
                out.append(line)
                continue
        if out:
            out.append(line)
    return "\n".join(out)


@pytest.fixture
def holder() -> Iterator[Holder]:
    h = Holder.spawn(timeout_s=60)
    try:
        yield h
    finally:
        h.kill()


def test_pages_are_written_read_back_and_dropped(holder: Holder) -> None:
    base = holder.map_region(8)
    assert base % (2 << 20) == 0
    holder.write([0, 1, 5], [0xAB, None, 0xAB])
    assert holder.read_first_words([0, 1, 5]) == ["00000000000000ab", "z", "00000000000000ab"]
    holder.dontneed([0, 5])
    assert holder.read_first_words([0, 5]) == ["z", "z"]  # reading back faults in the zero page
    vmflags = next(
        ln for ln in smaps_of_region(holder.pid, base).splitlines() if ln.startswith("VmFlags")
    )
    assert " nh" in vmflags  # MADV_NOHUGEPAGE
    assert " mg" not in vmflags  # never mergeable before register()


def test_fork_shares_pages_until_one_side_writes(holder: Holder) -> None:
    holder.map_region(4)
    holder.write([0, 1], [1, 2])
    child = holder.fork()
    try:
        assert child.pid != holder.pid
        assert child.read_first_words([0, 1]) == holder.read_first_words([0, 1])
        child.write([1], [3])
        assert holder.read_first_words([1]) == ["0000000000000002"]
        assert child.read_first_words([1]) == ["0000000000000003"]
        child.exit()
        assert is_gone(child.pid)
    finally:
        child.kill()
    assert holder.read_first_words([0]) == ["0000000000000001"]


def test_errors_are_reported_and_the_holder_keeps_serving(holder: Holder) -> None:
    with pytest.raises(HolderError, match="no region"):
        holder.write([0], [1])
    holder.map_region(2)
    with pytest.raises(HolderError, match="outside the region"):
        holder.write([5], [1])
    with pytest.raises(HolderError, match="unknown command"):
        holder.request("NOPE")
    holder.write([1], [9])
    assert holder.read_first_words([1]) == ["0000000000000009"]


def test_exit_releases_the_memory_and_leaves_no_process(holder: Holder) -> None:
    holder.map_region(256)
    holder.write(list(range(256)), [7] * 256)
    assert rss_anon_kb(holder.pid) >= 1024
    pid = holder.pid
    holder.exit()
    assert is_gone(pid)


def test_holders_die_with_their_controller_socket(holder: Holder) -> None:
    holder.map_region(1)
    child = holder.fork()
    pids = (holder.pid, child.pid)
    fd = os.pidfd_open(child.pid)
    try:
        child.sock.shutdown(socket.SHUT_RDWR)  # as if the controller died
        assert select.select([fd], [], [], 10)[0], "the forked holder did not exit"
    finally:
        os.close(fd)
        child.kill()
    holder.sock.shutdown(socket.SHUT_RDWR)
    assert holder.wait_gone(10)
    holder.kill()
    assert all(is_gone(p) for p in pids)

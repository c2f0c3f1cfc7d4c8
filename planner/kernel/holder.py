"""Holder processes: each owns the memory of one traced process and obeys commands.

A holder is started with ``python -m planner.kernel.holder PARENT_PID FD``. It talks to its
controller over the Unix socket ``FD`` with a line protocol (one command line in, one reply
line out):

=====================================  ==================================================
``R <nslots> <block,...|->``           map the region: ``nslots`` private anonymous pages,
                                       2 MiB aligned, ``MADV_NOHUGEPAGE`` except the listed
                                       512-slot blocks (``MADV_HUGEPAGE``); reply ``ok <addr>``
``W <slot> <hex|z> ...``               write pages: a page made from the 64-bit hash, or zeros
``D <slot> ...``                       ``MADV_DONTNEED`` the slots (the page vanishes)
``M``                                  ``MADV_MERGEABLE`` on the region (registers with KSM)
``F`` + one fd (SCM_RIGHTS)            fork; the child serves the passed socket; reply ``ok <pid>``
``Q <slot> ...``                       read back the first word of each slot (``z`` zero page)
``P``                                  ping
``X``                                  exit at once (no reply)
=====================================  ==================================================

Errors are answered ``err <text>``; the holder keeps serving. A holder dies with its
controller: root holders set ``PR_SET_PDEATHSIG``, and every holder exits when its socket
reaches end-of-file. Forked holders ignore ``SIGCHLD`` so that their own children are reaped
by the kernel. The interpreter's heap is never made mergeable (no ``prctl``): only the
region is ``MADV_MERGEABLE`` (docs/kernel-semantics.md §13: prctl would expose every
anonymous page of the interpreter to ksmd, hundreds to thousands of pages).

Page contents (:func:`page_bytes`): a non-zero page is the 64-bit content hash in big-endian
order followed by a fixed non-zero filler, so equal hashes give byte-identical pages, different
hashes differ in the first 8 bytes, and ``memcmp`` order equals hash order. Zero pages are all
zero bytes.

This module imports only the standard library: it is the holder's whole program. The
controller side is :class:`Holder`.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

PAGE_BYTES: Final = 4096
HPAGE_SLOTS: Final = 512
HPAGE_BYTES: Final = PAGE_BYTES * HPAGE_SLOTS
MADV_DONTNEED: Final = 4
MADV_MERGEABLE: Final = 12
MADV_HUGEPAGE: Final = 14
MADV_NOHUGEPAGE: Final = 15
PR_SET_PDEATHSIG: Final = 1
#: Filler of a non-zero page after its first 8 bytes ("ksm-plan" repeated): never all zero.
FILLER: Final = b"ksm-plan" * (PAGE_BYTES // 8 - 1)
ZERO_PAGE: Final = bytes(PAGE_BYTES)
_MAX_LINE: Final = 1 << 30


def page_bytes(content_hash: int | None) -> bytes:
    """The 4 KiB page of a content hash (``None``: the zero page).

    Examples
    --------
    >>> p = page_bytes(0x0102030405060708)
    >>> p[:8].hex(), len(p)
    ('0102030405060708', 4096)
    >>> page_bytes(None) == bytes(4096)
    True
    """
    if content_hash is None:
        return ZERO_PAGE
    return struct.pack(">Q", content_hash) + FILLER


# =============================================================================== holder side


class _Region:
    """The holder's private anonymous region (never MAP_SHARED: that is not KSM-eligible)."""

    def __init__(self, nslots: int, thp_blocks: Sequence[int]) -> None:
        self.nslots = nslots
        size = max(nslots, 1) * PAGE_BYTES + HPAGE_BYTES
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        raw = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.offset = (-raw) % HPAGE_BYTES  # slot 0 starts 2 MiB aligned
        self.base = raw + self.offset
        self.length = max(nslots, 1) * PAGE_BYTES
        _madvise(self.base, self.length, MADV_NOHUGEPAGE)
        for b in thp_blocks:
            _madvise(self.base + b * HPAGE_BYTES, HPAGE_BYTES, MADV_HUGEPAGE)

    def _off(self, slot: int) -> int:
        if not 0 <= slot < self.nslots:
            raise ValueError(f"slot {slot} outside the region (0..{self.nslots - 1})")
        return self.offset + slot * PAGE_BYTES

    def write(self, slot: int, page: bytes) -> None:
        o = self._off(slot)
        self.map[o : o + PAGE_BYTES] = page

    def dontneed(self, slots: Iterable[int]) -> None:
        for start, count in _runs(sorted(slots)):
            self._off(start + count - 1)
            _madvise(self.base + start * PAGE_BYTES, count * PAGE_BYTES, MADV_DONTNEED)

    def first_word(self, slot: int) -> str:
        o = self._off(slot)
        page = self.map[o : o + PAGE_BYTES]
        return "z" if page == ZERO_PAGE else page[:8].hex()


def _runs(slots: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted slots as ``(start, count)``."""
    runs: list[tuple[int, int]] = []
    for s in slots:
        if runs and runs[-1][0] + runs[-1][1] == s:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        elif not runs or runs[-1][0] + runs[-1][1] < s:
            runs.append((s, 1))
    return runs


_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.madvise.restype = ctypes.c_int
        lib.prctl.argtypes = [
            ctypes.c_int,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
        ]
        lib.prctl.restype = ctypes.c_int
        _libc = lib
    return _libc


def _madvise(addr: int, length: int, advice: int) -> None:
    if _c().madvise(addr, length, advice) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"madvise({advice}) failed: {os.strerror(err)}")


class _Server:
    """The command loop of one holder."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.fds: list[int] = []
        self.region: _Region | None = None

    def serve(self) -> None:
        self._send(f"ready {os.getpid()}")
        while True:
            line = self._readline()
            if line is None:  # controller gone
                os._exit(0)
            if not line:
                continue
            try:
                reply = self._handle(line)
            except Exception as exc:  # report and keep serving
                reply = "err " + " ".join(f"{type(exc).__name__}: {exc}".split())
            if reply is not None:
                self._send(reply)

    def _readline(self) -> str | None:
        while b"\n" not in self.buf:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 20, 4)
            self.fds.extend(fds)
            if not data:
                return None
            self.buf += data
            if len(self.buf) > _MAX_LINE:
                raise ValueError("command line too long")
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def _send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def _handle(self, line: str) -> str | None:
        cmd, *args = line.split()
        if cmd == "P":
            return "ok"
        if cmd == "R":
            if self.region is not None:
                raise ValueError("the region exists already")
            blocks = [] if args[1] == "-" else [int(b) for b in args[1].split(",")]
            self.region = _Region(int(args[0]), blocks)
            return f"ok {self.region.base:#x}"
        region = self.region
        if region is None:
            raise ValueError("no region yet (send R first)")
        if cmd == "W":
            for i in range(0, len(args), 2):
                tok = args[i + 1]
                region.write(int(args[i]), ZERO_PAGE if tok == "z" else page_bytes(int(tok, 16)))
            return "ok"
        if cmd == "D":
            region.dontneed(int(a) for a in args)
            return "ok"
        if cmd == "M":
            _madvise(region.base, region.length, MADV_MERGEABLE)
            return "ok"
        if cmd == "Q":
            return "ok " + " ".join(region.first_word(int(a)) for a in args)
        if cmd == "F":
            return self._fork()
        if cmd == "X":
            os._exit(0)
        raise ValueError(f"unknown command {cmd!r}")

    def _fork(self) -> str:
        if not self.fds:
            raise ValueError("F needs a socket passed with SCM_RIGHTS")
        fd = self.fds.pop(0)
        pid = os.fork()
        if pid == 0:  # the child: serve the new socket, forget the parent's
            with contextlib.suppress(OSError):
                self.sock.close()
            for extra in self.fds:
                with contextlib.suppress(OSError):
                    os.close(extra)
            self.fds = []
            self.buf = b""
            self.sock = socket.socket(fileno=fd)
            self.serve()
            os._exit(0)
        os.close(fd)
        return f"ok {pid}"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a holder: ``python -m planner.kernel.holder PARENT_PID FD``."""
    args = list(sys.argv[1:] if argv is None else argv)
    parent, fd = int(args[0]), int(args[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller handles ^C and kills us
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # our forked children are reaped by the kernel
    _c().prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the controller died before the prctl
        os._exit(1)
    _Server(socket.socket(fileno=fd)).serve()


# =========================================================================== controller side


def child_env() -> dict[str, str]:
    """The environment of a child running a module of this package (``python -m``): this
    package first on its path, no bytecode written."""
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_parent + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class HolderError(RuntimeError):
    """A holder answered an error, died, or did not answer in time."""


class Holder:
    """The controller's handle of one holder process.

    Use :meth:`spawn` for a new holder and :meth:`fork` for a child of an existing one.
    :meth:`exit` ends it and waits until its memory is gone; :meth:`kill` is the hard way.
    """

    def __init__(
        self,
        pid: int,
        sock: socket.socket,
        *,
        popen: subprocess.Popen[bytes] | None = None,
        timeout_s: float,
    ) -> None:
        self.pid = pid
        self.sock = sock
        self.popen = popen
        self.timeout_s = timeout_s
        self.pidfd = os.pidfd_open(pid)
        self._buf = b""
        self.alive = True

    @classmethod
    def spawn(cls, *, timeout_s: float = 600.0) -> Holder:
        """Start a new holder process (a fresh interpreter running this module)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = child_env()
        try:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "planner.kernel.holder",
                    str(os.getpid()),
                    str(theirs.fileno()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=env,
                cwd="/",
            )
        finally:
            theirs.close()
        h = cls(popen.pid, ours, popen=popen, timeout_s=timeout_s)
        try:
            h._handshake()
        except BaseException:
            h.kill()
            raise
        return h

    def _handshake(self) -> None:
        try:
            line = self._readline(timeout_s=min(self.timeout_s, 60.0))
        except HolderError as exc:
            detail = ""
            if (
                self.popen is not None
                and self.popen.stderr is not None
                and self.popen.poll() is not None
            ):
                detail = ": " + " ".join(
                    self.popen.stderr.read().decode(errors="replace").split()[-12:]
                )
            raise HolderError(f"holder {self.pid} did not start{detail}") from exc
        if line != f"ready {self.pid}":
            raise HolderError(f"holder {self.pid} sent {line!r} instead of 'ready'")

    def _readline(self, *, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise HolderError(f"holder {self.pid} did not answer within {timeout_s:.0f} s")
            data = self.sock.recv(1 << 16)
            if not data:
                self.alive = False
                raise HolderError(f"holder {self.pid} died")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def request(self, line: str, *, fds: Sequence[int] = ()) -> str:
        """Send one command line and return the reply after ``ok``."""
        data = line.encode() + b"\n"
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.sendall(data)
        except OSError as exc:
            self.alive = False
            raise HolderError(f"holder {self.pid} is gone ({exc})") from exc
        reply = self._readline(timeout_s=self.timeout_s)
        if reply.startswith("err"):
            raise HolderError(f"holder {self.pid}: {reply[4:]}")
        return reply[3:]

    # -- commands -------------------------------------------------------------------------

    def map_region(self, nslots: int, thp_blocks: Sequence[int] = ()) -> int:
        """Create the region; returns its (2 MiB aligned) start address."""
        blocks = ",".join(str(b) for b in thp_blocks) or "-"
        return int(self.request(f"R {nslots} {blocks}"), 16)

    def write(
        self, slots: Sequence[int], hashes: Sequence[int | None], *, chunk: int = 20000
    ) -> None:
        """Write pages: ``hashes[i]`` is the content hash of ``slots[i]`` (``None``: zero page)."""
        for lo in range(0, len(slots), chunk):
            parts = ["W"]
            for s, h in zip(slots[lo : lo + chunk], hashes[lo : lo + chunk], strict=True):
                parts.append(str(s))
                parts.append("z" if h is None else format(h, "x"))
            self.request(" ".join(parts))

    def dontneed(self, slots: Sequence[int], *, chunk: int = 50000) -> None:
        """Drop the pages at ``slots`` (MADV_DONTNEED)."""
        for lo in range(0, len(slots), chunk):
            self.request("D " + " ".join(str(s) for s in slots[lo : lo + chunk]))

    def register(self) -> None:
        """``MADV_MERGEABLE`` on the region: the holder's mm joins KSM's list."""
        self.request("M")

    def read_first_words(self, slots: Sequence[int]) -> list[str]:
        """The first 8 bytes (hex) of each slot's page, or ``z`` for an all-zero page."""
        return self.request("Q " + " ".join(str(s) for s in slots)).split()

    def fork(self) -> Holder:
        """Fork this holder; the child shares every page copy-on-write."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = int(self.request("F", fds=[theirs.fileno()]))
        finally:
            theirs.close()
        child = Holder(pid, ours, timeout_s=self.timeout_s)
        try:
            child._handshake()
        except BaseException:
            child.kill()
            raise
        return child

    def exit(self, *, timeout_s: float = 30.0) -> None:
        """Ask the holder to exit and wait until it is gone (its mm released)."""
        if not self.alive:
            self._close()
            return
        with contextlib.suppress(OSError):
            self.sock.sendall(b"X\n")
        if not self.wait_gone(timeout_s):
            self.kill()
            return
        self._reap()
        self._close()

    def kill(self, *, timeout_s: float = 30.0) -> None:
        """SIGKILL the holder and wait until it is gone."""
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            self.wait_gone(timeout_s)
        self._reap()
        self._close()

    def wait_gone(self, timeout_s: float) -> bool:
        """Wait until the process has exited (its pidfd turns readable)."""
        if self.pidfd < 0:
            return True
        return bool(select.select([self.pidfd], [], [], timeout_s)[0])

    def _reap(self) -> None:
        self.alive = False
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
            if self.popen.stderr is not None:
                self.popen.stderr.close()
        else:  # an orphaned fork child may have been re-parented to us (child subreaper)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self.pid, os.WNOHANG)

    def _close(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


if __name__ == "__main__":
    main()

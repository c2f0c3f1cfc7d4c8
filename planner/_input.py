"""Reading small input files (policy and grid TOML, cost profiles, recordings' JSON) safely.

One standard for every text file a command is given: it must be a regular file (a named
pipe would block the command forever, a device could be endless), of a sane size, and
UTF-8 text; anything else is refused with one line that says what the file is instead
(gzip data, UTF-16 text, Latin-1 bytes at line N, a NUL byte at line N, ...). A UTF-8
byte order mark, which some editors write, is skipped.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Final

from planner.errors import InputDataError, PlannerError

if TYPE_CHECKING:
    from collections.abc import Callable

#: Largest text input read (policy files, grids, profiles and manifests are a few KiB).
MAX_TEXT_BYTES = 16 << 20

#: Magic numbers of files that are not text: (prefix, what it is, the suffix under which
#: pyarrow decompresses it on the fly, or ``None`` when the format is not read as text).
MAGIC: Final = (
    (b"\x1f\x8b", "gzip-compressed data", ".gz"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", ".zst"),
    (b"\x04\x22\x4d\x18", "lz4-compressed data", ".lz4"),
    (b"\xfd7zXZ\x00", "xz-compressed data", None),
    (b"PK\x03\x04", "a zip archive", None),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", None),
    (b"PAR1", "a Parquet file", None),
    (b"ARROW1", "an Arrow IPC file", None),
    (b"SQLite format 3\x00", "an SQLite database", None),
    (b"\x7fELF", "an executable", None),
)


def sniff(head: bytes) -> tuple[str, str | None] | None:
    """What a file starting with ``head`` is, when it is a known binary format.

    Returns ``(what it is, decompression suffix or None)``, or ``None`` for anything else.
    """
    for magic, what, suffix in MAGIC:
        if head.startswith(magic):
            return what, suffix
    if len(head) >= 4 and head[:3] == b"BZh" and head[3:4] in b"123456789":
        return "bzip2-compressed data", ".bz2"
    return None


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages (``a named pipe (FIFO)``, ...)."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_input_bytes(
    path: str | os.PathLike[str],
    *,
    what: str,
    error: Callable[..., PlannerError] = InputDataError,
    max_bytes: int = MAX_TEXT_BYTES,
    follow_symlinks: bool = True,
) -> bytes:
    """The bytes of a regular file ``path`` (``what`` names it in messages: "policy file").

    Raises ``error(message, hint=...)`` when the file is missing, is not a regular file
    (checked on the opened descriptor, opened without blocking), cannot be read or holds
    more than ``max_bytes``. Without ``follow_symlinks`` a symbolic link is refused too
    (for files a manifest names inside its directory).
    """
    p = Path(path)
    try:
        st = os.stat(p, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist", hint=f"give the path of a {what}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(
            f"{what} {p} is {file_kind(st.st_mode)}, not a regular file",
            hint=f"give the path of a {what}",
        )
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {p} is {file_kind(st.st_mode)}, not a regular file")
        parts: list[bytes] = []
        size = 0
        try:
            while size <= max_bytes and (chunk := f.read(min(1 << 20, max_bytes + 1 - size))):
                parts.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise error(f"cannot read {what} {p}: {exc.strerror}") from None
        data = b"".join(parts)
    if len(data) > max_bytes:
        raise error(
            f"{what} {p} is larger than {max_bytes >> 20} MiB, far more than a {what} holds",
            hint=f"give the path of a {what}",
        )
    return data


def member_name(root: Path, name: object, *, what: str) -> Path:
    """The path of a file that a manifest in directory ``root`` names: a plain file name.

    Checked before anything touches the filesystem: a name with a directory part (``/``),
    ``..`` or a NUL byte is refused, so a manifest cannot make a reader look outside
    ``root``.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name:
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:80] + "..."
        raise InputDataError(
            f"{what} lists {shown}, which is not a file name inside {root}",
            hint="the recording is damaged or was edited; record it again",
        )
    return root / name


def decode_text(
    data: bytes, p: Path | str, *, what: str, error: Callable[..., PlannerError]
) -> str:
    """``data`` as text: UTF-8 (a BOM is skipped); anything else is refused with a reason."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise error(f"{what} {p} is UTF-16 text, not UTF-8", hint="save it as UTF-8")
    sniffed = sniff(data[:16])
    if sniffed is not None:
        raise error(f"{what} {p} is {sniffed[0]}, not text", hint=f"give the path of a {what}")
    nul = data.find(b"\x00")
    try:
        text = data.decode("utf-8") if nul < 0 else data[:nul].decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{what} {p}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text "
            "(the file looks Latin-1 or Windows-1252 encoded)",
            hint="save it as UTF-8",
        ) from None
    if nul >= 0:
        line = data[:nul].count(b"\n") + 1
        raise error(
            f"{what} {p}: line {line} contains a NUL byte (binary data, not text)",
            hint=f"give the path of a {what}",
        )
    return text


def read_input_text(
    path: str | os.PathLike[str],
    *,
    what: str,
    error: Callable[..., PlannerError] = InputDataError,
    max_bytes: int = MAX_TEXT_BYTES,
) -> str:
    """The UTF-8 text of a regular file (see :func:`read_input_bytes`, :func:`decode_text`)."""
    data = read_input_bytes(path, what=what, error=error, max_bytes=max_bytes)
    return decode_text(data, Path(path), what=what, error=error)


__all__ = [
    "MAGIC",
    "MAX_TEXT_BYTES",
    "decode_text",
    "file_kind",
    "member_name",
    "read_input_bytes",
    "read_input_text",
    "sniff",
]

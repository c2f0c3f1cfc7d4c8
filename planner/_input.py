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
from typing import TYPE_CHECKING

from planner.errors import InputDataError, PlannerError

if TYPE_CHECKING:
    from collections.abc import Callable

#: Largest text input read (policy files, grids, profiles and manifests are a few KiB).
MAX_TEXT_BYTES = 16 << 20

_BINARY_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (b"BZh", "bzip2-compressed data"),
    (b"\xfd7zXZ\x00", "xz-compressed data"),
    (b"PK\x03\x04", "a zip archive"),
    (b"PAR1", "a Parquet file"),
    (b"\x7fELF", "an executable"),
)


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
    for magic, kind in _BINARY_MAGIC:
        if data.startswith(magic):
            raise error(f"{what} {p} is {kind}, not text", hint=f"give the path of a {what}")
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
    "MAX_TEXT_BYTES",
    "decode_text",
    "file_kind",
    "member_name",
    "read_input_bytes",
    "read_input_text",
]

"""The capture key: a per-collection secret that turns page hashes into keyed hashes.

Traces never hold page contents, only ``xxh3_64`` hashes seeded from a secret key, so a
trace that leaves the host cannot be used to confirm guesses of low-entropy pages (see
docs/capture.md §4.13). The key lives in a file (32 random bytes, mode 0600), created
on first use. Traces record only the key id, a short fingerprint that names the key without
revealing it: traces captured with the same key have equal hashes for equal pages, and the
id tells whether two traces can be compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from planner.errors import CapturePermissionError, InputDataError

KEY_BYTES: Final = 32
MIN_KEY_BYTES: Final = 16
HASH_ALGO: Final = "xxh3_64-seeded"
_SEED_CONTEXT: Final = b"ksm-planner capture seed v1\0"


@dataclass(frozen=True)
class CaptureKey:
    """The hash seed derived from a key file, and the key's public id.

    ``seed`` and ``key_id`` are derived from the key by two independent SHA-256 hashes, so
    the id reveals nothing about the seed.
    """

    seed: int
    """64-bit seed of ``xxh3_64`` (secret: never written anywhere)."""
    key_id: str
    """First 16 hex digits of SHA-256 of the key (public, recorded in traces)."""

    @classmethod
    def from_bytes(cls, key: bytes) -> CaptureKey:
        """Derive the seed and the id from the raw key bytes."""
        if len(key) < MIN_KEY_BYTES:
            raise InputDataError(
                f"the capture key has {len(key)} bytes, fewer than {MIN_KEY_BYTES}",
                hint="delete the key file to create a new one, or give another --key-file",
            )
        seed = int.from_bytes(hashlib.sha256(_SEED_CONTEXT + key).digest()[:8], "little")
        return cls(seed=seed, key_id=hashlib.sha256(key).hexdigest()[:16])

    def __repr__(self) -> str:  # keep the seed out of logs and tracebacks
        return f"CaptureKey(key_id={self.key_id!r})"


def default_key_path() -> Path:
    """``$XDG_CONFIG_HOME/ksm-planner/capture.key`` (``~/.config/ksm-planner/capture.key``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ksm-planner" / "capture.key"


def load_key(path: str | os.PathLike[str] | None = None, *, create: bool = True) -> CaptureKey:
    """Read the key file at ``path`` (the default path when ``None``), creating it if missing.

    A new key file holds 32 random bytes and is created with mode 0600 (its directory 0700)
    without ever being readable by others. An existing key file that others can read is
    refused, like ssh refuses an open private key.

    Raises
    ------
    CapturePermissionError
        The key file is readable or writable by group/others, or cannot be read or created.
    InputDataError
        The key file is too short to be a key.
    """
    p = Path(path) if path is not None else default_key_path()
    if not p.exists() and create:
        _create_key(p)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise InputDataError(
            f"key file {p} does not exist", hint="omit --key-file to use the default key"
        ) from None
    except OSError as exc:
        raise CapturePermissionError(
            f"cannot read key file {p}: {exc.strerror}", hint="check its owner and mode (0600)"
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputDataError(
                f"key file {p} is not a regular file", hint="give the path of a key file"
            )
        if st.st_mode & 0o077:
            raise CapturePermissionError(
                f"key file {p} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o})",
                hint=f"run 'chmod 600 {p}' (and consider it leaked: delete it to make a new key)",
            )
        data = b""
        while chunk := os.read(fd, 4096):
            data += chunk
    finally:
        os.close(fd)
    return CaptureKey.from_bytes(data)


def _create_key(path: Path) -> None:
    """Create the key file atomically: write a private temporary file, then hard-link it.

    ``link`` fails if the path exists, so a key created concurrently is never replaced and
    no reader ever sees a half-written key.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)  # mode 0600
    except OSError as exc:
        raise CapturePermissionError(
            f"cannot create key file {path}: {exc.strerror}", hint="give a writable --key-file path"
        ) from exc
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        with contextlib.suppress(FileExistsError):  # created concurrently: use that one
            os.link(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)

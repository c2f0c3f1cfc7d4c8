"""The capture key: a per-collection secret that turns page hashes into keyed hashes.

Traces never hold page contents, only ``xxh3_64`` hashes seeded from a secret key, so a
trace that leaves the host cannot be used to confirm guesses of low-entropy pages (see
docs/capture.md §4.13). The key lives in a file (32 random bytes, mode 0600), created
on first use -- by a capture that succeeds: :func:`prepare_key` makes a new key in memory
and :meth:`PendingKey.persist` writes it when the trace is complete, so a failed capture
leaves no key file behind. Traces record only the key id, a short fingerprint that names the
key without revealing it: traces captured with the same key have equal hashes for equal
pages, and the id tells whether two traces can be compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from planner.errors import CapturePermissionError, EnvironmentProblem, InputDataError

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


@dataclass(frozen=True)
class PendingKey:
    """The key of a capture in progress: read from its file, or new and not yet written."""

    key: CaptureKey
    path: Path
    new_bytes: bytes | None = field(default=None, repr=False)
    """The bytes of a new key, written by :meth:`persist` (``None``: the file exists)."""

    def persist(self) -> None:
        """Write a new key to its file (atomically; never replacing another key).

        Raises
        ------
        CapturePermissionError
            The key file cannot be created.
        EnvironmentProblem
            Another capture created a different key at the same path meanwhile: this
            capture's hashes could not be compared with anything later.
        """
        if self.new_bytes is None:
            return
        if not _create_key(self.path, self.new_bytes):
            other = load_key(self.path, create=False)
            if other.key_id != self.key.key_id:
                raise EnvironmentProblem(
                    f"another capture created the key file {self.path} while this one ran",
                    hint="run the capture again: it will use that key",
                )

    def discard(self) -> None:
        """Remove a key file :meth:`persist` created (the capture failed after all)."""
        if self.new_bytes is None:
            return
        with contextlib.suppress(OSError):
            if self.path.read_bytes() == self.new_bytes:
                self.path.unlink()


def prepare_key(path: str | os.PathLike[str] | None = None) -> PendingKey:
    """The key at ``path`` (the default path when ``None``), or a new one to persist later.

    Nothing is written: a missing key file is made by :meth:`PendingKey.persist` once the
    capture succeeded. The directory must be creatable now, so that a capture does not
    fail only at its end.

    Raises
    ------
    CapturePermissionError, InputDataError
        As :func:`load_key`; or the key file's directory is not writable.
    """
    p = Path(path) if path is not None else default_key_path()
    if os.path.lexists(p):
        return PendingKey(key=load_key(p, create=False), path=p)
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise CapturePermissionError(
            f"cannot create key file {p}: {ancestor} is not a writable directory",
            hint="give a writable --key-file path",
        )
    data = os.urandom(KEY_BYTES)
    return PendingKey(key=CaptureKey.from_bytes(data), path=p, new_bytes=data)


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
        _create_key(p, os.urandom(KEY_BYTES))
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


def _create_key(path: Path, data: bytes) -> bool:
    """Create the key file atomically: write a private temporary file, then hard-link it.

    ``link`` fails if the path exists, so a key created concurrently is never replaced and
    no reader ever sees a half-written key. Returns whether this call created the file.
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
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)
        except FileExistsError:  # created concurrently: use that one
            return False
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)

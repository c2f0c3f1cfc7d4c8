"""Output files: written under a temporary name, then renamed; captured data owner-only.

Nothing half-written is ever left at the requested path: a failure removes the temporary
file or directory, and the final rename is atomic on the same filesystem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import OutputExistsError

if TYPE_CHECKING:
    from collections.abc import Iterator

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _check_target(path: Path, *, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists", hint="choose another --out or pass --force"
        )
    parent = path.parent
    if not parent.exists():
        raise OutputExistsError(f"directory {parent} does not exist", hint="create it first")


def _replace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``, replacing what is there (a file or a whole directory)."""
    if path.is_dir() and not path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.rename(path, old / "x")
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str], *, overwrite: bool = False, private: bool = True
) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block succeeds.

    The directory (mode 0700 when ``private``) lives next to ``path``. Files written in it
    should be created with :func:`private_open` or made owner-only with
    :func:`make_private` when they hold captured data.
    """
    target = Path(path)
    _check_target(target, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if not private:
            tmp.chmod(0o755)
        yield tmp
        if private:
            make_private(tmp)
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], *, overwrite: bool = False, private: bool = True
) -> Iterator[Path]:
    """Yield a temporary file path that is renamed to ``path`` when the block succeeds."""
    target = Path(path)
    _check_target(target, overwrite=overwrite)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(PRIVATE_FILE_MODE if private else 0o644)
        _replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def make_private(root: Path) -> None:
    """Make ``root`` and everything below it readable by the owner only."""
    if root.is_dir():
        root.chmod(PRIVATE_DIR_MODE)
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                Path(dirpath, d).chmod(PRIVATE_DIR_MODE)
            for f in filenames:
                Path(dirpath, f).chmod(PRIVATE_FILE_MODE)
    else:
        root.chmod(PRIVATE_FILE_MODE)

"""Output files and directories: claimed, written under a temporary name, marked, renamed.

Every output of ksm-planner (a trace, a replay's timelines, a what-if result, a review, an
observation, a cost profile, an export) goes through this module, which keeps four promises:

**Nothing half-written.** The output is built under a temporary name next to it
(``.NAME.tmp-*``) and renamed into place only when complete; a failure or a signal removes
the temporary file or directory. Replacing a directory is one atomic exchange
(``renameat2(RENAME_EXCHANGE)``), creating one is an atomic create
(``renameat2(RENAME_NOREPLACE)``), where the filesystem supports them.

**Nothing of the user's destroyed.** Each output carries a mark naming the kind of output:
a directory holds a small file :data:`OUTPUT_MARKER` (``{"kind": "review", ...}``), a
single file carries the extended attribute :data:`OUTPUT_XATTR`. ``--force``
(``overwrite=True``) replaces only a marked previous output of the same kind -- never an
unmarked path, never a path that is, contains or is inside an input of the command, never
``.``, ``..``, ``/``, the current directory or one of its parents, never a symbolic link.
Each refusal is one line (:class:`~planner.errors.OutputRefusedError`, exit code 2).

**One writer at a time.** The output is claimed with an ``flock`` on ``.NAME.lock`` next to
it, held from the start of the command (:func:`claim_output`) to the final rename, so a
second run to the same path fails at once (:class:`~planner.errors.OutputBusyError`, exit
code 2) instead of silently replacing the first run's output. The lock file is removed when
the claim ends.

**Clear errors.** A directory that cannot be written (permission, read-only filesystem,
``/proc``) is :class:`~planner.errors.OutputNotWritableError` (exit code 3); a missing
parent directory or an impossible name is a usage error (exit code 2).

Captured data is owner-only: :func:`make_private` (and ``private=True``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from planner._signals import signals_deferred
from planner.errors import (
    OutputBusyError,
    OutputExistsError,
    OutputNotWritableError,
    OutputRefusedError,
    UsageProblem,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

#: Name of the mark file inside every output directory ksm-planner writes.
OUTPUT_MARKER: Final = ".ksm-planner-output"
#: Extended attribute that marks a single output file ksm-planner wrote.
OUTPUT_XATTR: Final = "user.ksm-planner.output"
#: What the mark says when the writer did not name a kind (library use without a claim).
GENERIC_KIND: Final = "output"

#: errno values that mean "this place cannot be written" (the environment), not a bad name.
_NOT_WRITABLE: Final = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
)


# ----------------------------------------------------------------------------- path rules


def _display(path: Path) -> str:
    return str(path) or "."


def _real(path: Path) -> Path:
    """The absolute, symlink-free form of ``path`` (which need not exist)."""
    return Path(os.path.realpath(path))


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies below it (both absolute and real)."""
    return a == b or b in a.parents


def _check_name(target: Path) -> None:
    """Refuse paths that name no new entry: ``''``, ``.``, ``..``, ``/``, ``x/..``."""
    text = os.fspath(target)
    last = text.rstrip("/").rsplit("/", 1)[-1] if text.rstrip("/") else ""
    if last in ("", ".", ".."):
        raise OutputRefusedError(
            f"--out {text or repr(text)} does not name a new file or directory",
            hint="give a new name, e.g. --out review",
        )


def _check_location(target: Path, inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse the current directory (or a parent of it) and any path related to an input."""
    real = _real(target)
    cwd = _real(Path.cwd())
    if _inside(cwd, real):
        what = "the current directory" if real == cwd else "a parent of the current directory"
        raise OutputRefusedError(
            f"--out {_display(target)} is {what}", hint="give a new name, e.g. --out review"
        )
    for raw in inputs:
        inp = Path(raw)
        real_inp = _real(inp)
        if real == real_inp:
            how = "is the input"
        elif _inside(real_inp, real):
            how = "contains the input"
        elif _inside(real, real_inp):
            how = "is inside the input"
        else:
            continue
        raise OutputRefusedError(
            f"--out {_display(target)} {how} {_display(inp)}; writing there would destroy it",
            hint="choose an --out outside the command's inputs",
        )


def _check_parent(target: Path) -> None:
    parent = target.parent
    try:
        st = parent.stat()
    except FileNotFoundError:
        raise OutputExistsError(
            f"directory {_display(parent)} does not exist", hint="create it first"
        ) from None
    except OSError as exc:
        raise _os_error(exc, target) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageProblem(
            f"{_display(parent)} is not a directory", hint="give an --out inside a directory"
        )


def marked_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of output ksm-planner marked ``path`` with, or ``None`` if it is unmarked.

    A directory is marked by the file :data:`OUTPUT_MARKER` in it, a regular file by the
    extended attribute :data:`OUTPUT_XATTR`.
    """
    p = Path(path)
    try:
        st = p.lstat()
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        marker = p / OUTPUT_MARKER
        try:
            mst = marker.lstat()
            if not stat.S_ISREG(mst.st_mode) or mst.st_size > 4096:
                return None  # never read a FIFO, a device or a link as a mark
            doc = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("written_by") != "ksm-planner":
            return None
        kind = doc.get("kind")
        return kind if isinstance(kind, str) and kind else GENERIC_KIND
    if stat.S_ISREG(st.st_mode):
        try:
            value = os.getxattr(p, OUTPUT_XATTR, follow_symlinks=False)
        except OSError:
            return None
        return value.decode("utf-8", "replace") or GENERIC_KIND
    return None


def _check_existing(target: Path, *, kind: str | None, overwrite: bool, directory: bool) -> None:
    """What is at ``target`` now may be replaced (or there is nothing there)."""
    try:
        st = target.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _os_error(exc, target) from None
    shown = _display(target)
    if stat.S_ISLNK(st.st_mode):
        raise OutputRefusedError(
            f"--out {shown} is a symbolic link", hint="give the real path, or a new name"
        )
    if not overwrite:
        raise OutputExistsError(
            f"{shown} already exists", hint="choose another --out or pass --force"
        )
    is_dir = stat.S_ISDIR(st.st_mode)
    want = "directory" if directory else "file"
    if is_dir != directory or not (is_dir or stat.S_ISREG(st.st_mode)):
        raise OutputRefusedError(
            f"--force cannot replace {shown}: it is not a {want}",
            hint="choose another --out",
        )
    found = marked_kind(target)
    if found is None:
        how = f"it has no {OUTPUT_MARKER} file" if is_dir else f"it has no {OUTPUT_XATTR} attribute"
        raise OutputRefusedError(
            f"--force replaces only an earlier output of ksm-planner, and {shown} is not one "
            f"({how})",
            hint="remove it yourself or choose another --out",
        )
    if kind is not None and GENERIC_KIND not in (kind, found) and found != kind:
        raise OutputRefusedError(
            f"--force replaces only an earlier {kind} output, and {shown} is a {found}",
            hint="remove it yourself or choose another --out",
        )


def check_output(
    path: str | os.PathLike[str],
    *,
    kind: str | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    directory: bool = True,
) -> Path:
    """Refuse now, with one line, an output path that cannot or may not be written.

    Checks, without writing anything: the name (not ``.``, ``..``, ``/``), the location
    (not the current directory or a parent of it; not, not containing and not inside any of
    ``inputs``), the parent directory (exists), and what is at the path now (nothing; or,
    with ``overwrite``, an earlier output of ``kind`` -- a directory when ``directory``,
    else a regular file -- that is not a symbolic link). :func:`claim_output` and the
    ``atomic_*`` writers call it; call it directly to fail early without claiming.

    Raises
    ------
    OutputRefusedError, OutputExistsError, UsageProblem
        Exit code 2: the path may not be written.
    OutputNotWritableError
        Exit code 3: the path cannot be inspected (permission).
    """
    target = Path(path)
    _check_name(target)
    _check_location(target, inputs)
    _check_parent(target)
    _check_existing(target, kind=kind, overwrite=overwrite, directory=directory)
    return target


# ----------------------------------------------------------------------------- claims


@dataclass
class _Claim:
    key: str
    kind: str
    inputs: tuple[Path, ...]
    fd: int
    lock_path: Path
    depth: int = 1


_claims: dict[str, _Claim] = {}
_claims_lock = threading.Lock()


def _key(target: Path) -> str:
    return os.path.join(os.path.realpath(target.parent), target.name)


def lock_path_of(path: str | os.PathLike[str]) -> Path:
    """The lock file of the output ``path`` (``.NAME.lock`` next to it)."""
    p = Path(path)
    return p.parent / f".{p.name}.lock"


def _os_error(exc: OSError, target: Path) -> UsageProblem | OutputNotWritableError:
    where = _display(target.parent)
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _NOT_WRITABLE:
        return OutputNotWritableError(
            f"cannot write {_display(target)}: {reason} (in {where})",
            hint="choose an --out in a writable directory",
        )
    return OutputRefusedError(
        f"cannot write {_display(target)}: {reason} (in {where})",
        hint="choose an --out in an ordinary writable directory",
    )


def _lock(target: Path) -> tuple[int, Path]:
    """Take the exclusive lock of ``target``; :class:`OutputBusyError` if another run has it."""
    lock_path = lock_path_of(target)
    while True:
        try:
            fd = os.open(
                lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_FILE_MODE
            )
        except OSError as exc:
            raise _os_error(exc, target) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                pid = int(os.pread(fd, 32, 0).decode().strip() or "0")
                holder = f" (pid {pid})" if pid else ""
            os.close(fd)
            raise OutputBusyError(
                f"{_display(target)} is being written by another ksm-planner run{holder}",
                hint="wait for it to finish, or choose another --out",
            ) from None
        except OSError as exc:
            os.close(fd)
            raise _os_error(exc, target) from None
        # The holder before us may have removed the file between our open and our lock:
        # then we hold a lock on a file nobody else will ever see. Start again.
        try:
            current = os.stat(lock_path, follow_symlinks=False)
        except FileNotFoundError:
            os.close(fd)
            continue
        mine = os.fstat(fd)
        if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)
            continue
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd, lock_path


def _unlock(claim: _Claim) -> None:
    with contextlib.suppress(OSError):
        os.unlink(claim.lock_path)  # while still holding the lock: see _lock
    os.close(claim.fd)


@contextlib.contextmanager
def claim_output(
    path: str | os.PathLike[str],
    *,
    kind: str,
    inputs: Iterable[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    directory: bool = True,
) -> Iterator[Path]:
    """Claim the output ``path`` of a command for the duration of the block.

    Checks the path (:func:`check_output`), then takes its lock, so that the checks hold
    until the output is renamed into place and a concurrent run to the same path fails at
    once. The ``atomic_*`` writers called for ``path`` inside the block use this claim: its
    lock, its ``kind`` (written into the mark) and its ``inputs`` (checked again at the
    final rename).

    Raises
    ------
    OutputBusyError
        Another process holds the claim (exit code 2).
    """
    target = Path(path)
    inputs_t = tuple(Path(p) for p in inputs)
    check_output(target, kind=kind, inputs=inputs_t, overwrite=overwrite, directory=directory)
    key = _key(target)
    with _claims_lock:
        claim = _claims.get(key)
        if claim is not None:
            claim.depth += 1
    if claim is None:
        fd, lock_path = _lock(target)
        claim = _Claim(key=key, kind=kind, inputs=inputs_t, fd=fd, lock_path=lock_path)
        with _claims_lock:
            _claims[key] = claim
        try:
            # Checked again under the lock: another run may have finished in between.
            check_output(
                target, kind=kind, inputs=inputs_t, overwrite=overwrite, directory=directory
            )
        except BaseException:
            _release(claim)
            raise
    try:
        yield target
    finally:
        _release(claim)


def _release(claim: _Claim) -> None:
    with _claims_lock:
        claim.depth -= 1
        if claim.depth:
            return
        _claims.pop(claim.key, None)
    _unlock(claim)


@contextlib.contextmanager
def _claimed(
    target: Path,
    *,
    kind: str | None,
    inputs: Iterable[str | os.PathLike[str]],
    overwrite: bool,
    directory: bool,
) -> Iterator[_Claim]:
    """This process's claim of ``target`` (made now, for the block, if there is none)."""
    with _claims_lock:
        claim = _claims.get(_key(target))
    if claim is not None:
        yield claim
        return
    with claim_output(
        target,
        kind=kind or GENERIC_KIND,
        inputs=inputs,
        overwrite=overwrite,
        directory=directory,
    ):
        with _claims_lock:
            claim = _claims[_key(target)]
        yield claim


# ----------------------------------------------------------------------------- renames

_AT_FDCWD: Final = -100
_RENAME_NOREPLACE: Final = 1
_RENAME_EXCHANGE: Final = 2


def _libc_renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # pragma: no cover - glibc < 2.28, other libcs
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _libc_renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; ``False`` when the system or filesystem lacks it."""
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(dst))


def _create(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``, failing (never replacing) if ``target`` appeared."""
    try:
        if _rename2(tmp, target, _RENAME_NOREPLACE):
            return
        if tmp.is_dir():
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, "exists", os.fspath(target))
            os.rename(tmp, target)
        else:
            os.link(tmp, target)  # fails if target exists
            os.unlink(tmp)
    except FileExistsError:
        raise OutputExistsError(
            f"{_display(target)} appeared while it was being written",
            hint="another program wrote it; choose another --out or pass --force",
        ) from None


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the directory ``tmp`` at ``target``; what was at ``target`` ends up at ``tmp``."""
    if _rename2(tmp, target, _RENAME_EXCHANGE):
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / "x")
    os.rename(tmp, target)
    os.rename(old / "x", tmp)
    old.rmdir()


def _commit(
    tmp: Path,
    target: Path,
    claim: _Claim,
    *,
    inputs: Iterable[str | os.PathLike[str]],
    overwrite: bool,
    directory: bool,
) -> None:
    """Check ``target`` once more (under the claim) and rename ``tmp`` onto it."""
    _check_location(target, (*claim.inputs, *inputs))
    _check_existing(target, kind=claim.kind, overwrite=overwrite, directory=directory)
    try:
        if not os.path.lexists(target):
            _create(tmp, target)
        elif directory:
            _swap_in(tmp, target)
            shutil.rmtree(tmp, ignore_errors=True)  # what was replaced
        else:
            os.replace(tmp, target)
    except OSError as exc:
        raise _os_error(exc, target) from None


def _write_marker(tmp: Path, kind: str) -> None:
    doc = {"kind": kind, "written_by": "ksm-planner"}
    (tmp / OUTPUT_MARKER).write_text(json.dumps(doc, sort_keys=True) + "\n", encoding="utf-8")


def _mark_file(tmp: Path, kind: str) -> None:
    # A filesystem without user extended attributes leaves the file unmarked: --force will
    # then refuse to replace it, which is the safe side.
    with contextlib.suppress(OSError):
        os.setxattr(tmp, OUTPUT_XATTR, kind.encode())


# ----------------------------------------------------------------------------- writers


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    private: bool = True,
    kind: str | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block succeeds.

    The directory (mode 0700 when ``private``) lives next to ``path`` as ``.NAME.tmp-*``;
    on success it gets the mark file (:data:`OUTPUT_MARKER`, naming ``kind``) and is renamed
    to ``path``; on failure (or a signal) it is removed. ``path`` is claimed (locked) for
    the block unless the caller claimed it already (:func:`claim_output`), and the rules of
    :func:`check_output` apply, at entry and again at the rename. Files written in it
    should be created with :func:`make_private` applied when they hold captured data.
    """
    target = Path(path)
    inputs = tuple(inputs)
    with _claimed(target, kind=kind, inputs=inputs, overwrite=overwrite, directory=True) as claim:
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        except OSError as exc:
            raise _os_error(exc, target) from None
        try:
            if not private:
                tmp.chmod(0o755)
            yield tmp
            with signals_deferred():
                _write_marker(tmp, claim.kind)
                if private:
                    make_private(tmp)
                _commit(tmp, target, claim, inputs=inputs, overwrite=overwrite, directory=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    private: bool = True,
    kind: str | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[Path]:
    """Yield a temporary file path that is renamed to ``path`` when the block succeeds.

    Like :func:`atomic_dir`, for one file; the mark is the extended attribute
    :data:`OUTPUT_XATTR` (where the filesystem keeps user attributes).
    """
    target = Path(path)
    inputs = tuple(inputs)
    with _claimed(target, kind=kind, inputs=inputs, overwrite=overwrite, directory=False) as claim:
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        except OSError as exc:
            raise _os_error(exc, target) from None
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            with signals_deferred():
                tmp.chmod(PRIVATE_FILE_MODE if private else 0o644)
                _mark_file(tmp, claim.kind)
                _commit(tmp, target, claim, inputs=inputs, overwrite=overwrite, directory=False)
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

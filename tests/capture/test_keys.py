"""The capture key file, the key id, and keyed page hashing."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import xxhash

from planner.capture.hashing import PageHasher
from planner.capture.keys import HASH_ALGO, KEY_BYTES, CaptureKey, default_key_path, load_key
from planner.errors import CapturePermissionError, InputDataError
from planner.trace.schema import PLAIN_XXH3_ZERO_PAGE_HASH


def test_missing_key_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "ksm-planner" / "capture.key"
    key = load_key(path)
    data = path.read_bytes()
    assert len(data) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert key.key_id == hashlib.sha256(data).hexdigest()[:16]
    assert load_key(path) == key  # stable: the file is reused, not rewritten
    assert [p.name for p in path.parent.iterdir()] == ["capture.key"]  # no temp file left


def test_two_new_keys_differ(tmp_path: Path) -> None:
    assert load_key(tmp_path / "a.key") != load_key(tmp_path / "b.key")


def test_key_id_does_not_reveal_the_seed() -> None:
    key = CaptureKey.from_bytes(b"k" * 32)
    assert key.key_id == hashlib.sha256(b"k" * 32).hexdigest()[:16]
    assert int(key.key_id, 16) != key.seed
    assert str(key.seed) not in repr(key)
    assert CaptureKey.from_bytes(b"j" * 32).seed != key.seed


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(CapturePermissionError, match="accessible by others"):
        load_key(path)


def test_short_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.key"
    path.write_bytes(b"abc")
    path.chmod(0o600)
    with pytest.raises(InputDataError, match="3 bytes"):
        load_key(path)


def test_key_path_that_is_a_directory(tmp_path: Path) -> None:
    d = tmp_path / "dir.key"
    d.mkdir(mode=0o700)
    with pytest.raises(InputDataError, match="not a regular file"):
        load_key(d)


def test_missing_key_without_create(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="does not exist"):
        load_key(tmp_path / "nope.key", create=False)


def test_default_key_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_key_path() == tmp_path / "ksm-planner" / "capture.key"


def test_page_hashes_are_seeded_xxh3() -> None:
    key = CaptureKey.from_bytes(bytes(range(32)))
    hasher = PageHasher(key)
    pages = bytes(4096) + b"\x01" * 4096 + bytes(4096)
    hashes = hasher.hash_pages(memoryview(pages), 3)
    assert hashes[0] == hashes[2] == hasher.zero_hash
    assert hashes[1] == xxhash.xxh3_64_intdigest(b"\x01" * 4096, seed=key.seed)
    assert hasher.zero_hash != PLAIN_XXH3_ZERO_PAGE_HASH  # keyed, not the public zero hash
    assert hasher.hash_pages_array(memoryview(pages), 2).tolist() == hashes[:2]
    other = PageHasher(CaptureKey.from_bytes(bytes(range(1, 33))))
    assert other.hash_pages(memoryview(pages), 2) != hashes[:2]
    assert HASH_ALGO == "xxh3_64-seeded"

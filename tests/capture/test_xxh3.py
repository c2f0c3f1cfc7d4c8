"""The compiled page hash is exactly the ``xxhash`` library's seeded xxh3_64 of each page."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

from planner.capture.hashing import PageHasher
from planner.capture.keys import CaptureKey
from planner.capture.xxh3 import K_SECRET, PageSecret, hash_pages, library_xxh3

PAGE = 4096


def _pages() -> np.ndarray:
    rng = np.random.default_rng(20261203)
    pages = [
        rng.integers(0, 256, PAGE, dtype=np.uint8),  # random
        np.zeros(PAGE, np.uint8),  # zeros
        np.full(PAGE, 0xFF, np.uint8),  # all ones
        np.arange(PAGE, dtype=np.uint32).astype(np.uint8),  # a ramp
        np.frombuffer(np.arange(PAGE // 8, dtype="<u8").tobytes(), np.uint8),  # counters
        *rng.integers(0, 256, (11, PAGE), dtype=np.uint8),
    ]
    one_bit = np.zeros(PAGE, np.uint8)
    one_bit[PAGE - 1] = 1  # the last byte is read by the final stripe only
    pages.append(one_bit)
    return np.concatenate(pages)


@pytest.mark.parametrize("seed", [0, 1, 2**63, 2**64 - 1, 0x5DEECE66D0FF1CE5])
def test_matches_the_xxhash_library(seed: int) -> None:
    data = _pages()
    n = len(data) // PAGE
    got = hash_pages(PageSecret.from_seed(seed), data, n)
    view = memoryview(data)
    want = [xxhash.xxh3_64_intdigest(view[i * PAGE : (i + 1) * PAGE], seed=seed) for i in range(n)]
    assert got.tolist() == want


def test_slices_and_output_buffer() -> None:
    data = _pages()
    secret = PageSecret.from_seed(7)
    whole = hash_pages(secret, data, len(data) // PAGE)
    out = np.zeros(3, np.uint64)
    hash_pages(secret, data, 3, first=4, out=out)
    assert out.tolist() == whole[4:7].tolist()
    with pytest.raises(ValueError, match="holds"):
        hash_pages(secret, data[:PAGE], 2)


def test_page_hasher_uses_the_same_function(capture_key: CaptureKey) -> None:
    hasher = PageHasher(capture_key)
    data = _pages()
    n = len(data) // PAGE
    assert hash_pages(hasher.secret, data, n).tolist() == hasher.hash_pages(memoryview(data), n)
    assert hasher.zero_hash == int(hash_pages(hasher.secret, np.zeros(PAGE, np.uint8), 1)[0])


def test_default_secret_is_xxhash_s() -> None:
    # seed 0 uses the default secret unchanged: one page hashed by it matches the library
    assert len(K_SECRET) == 192
    page = np.frombuffer(bytes(range(256)) * 16, np.uint8)
    assert int(hash_pages(PageSecret.from_seed(0), page, 1)[0]) == xxhash.xxh3_64_intdigest(
        page.tobytes()
    )
    assert repr(PageSecret.from_seed(3)) == "PageSecret(...)"


@pytest.mark.parametrize("seed", [0, 1, 2**63, 2**64 - 1, 0x5DEECE66D0FF1CE5])
def test_library_function_is_found_and_matches(seed: int) -> None:
    fn = library_xxh3()
    assert fn is not None, "XXH3_64bits_withSeed was not found in the xxhash extension"
    data = _pages()
    n = len(data) // PAGE
    got = [int(fn(data.ctypes.data + i * PAGE, PAGE, seed)) for i in range(n)]
    assert got == hash_pages(PageSecret.from_seed(seed), data, n).tolist()
    assert PageSecret.from_seed(seed).seed == seed

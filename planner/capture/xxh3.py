"""Seeded ``xxh3_64`` of many 4 KiB pages in one compiled call (numba, no GIL held).

The capture hashes every page it reads with the keyed ``xxh3_64`` of
:mod:`planner.capture.hashing`. Calling the ``xxhash`` library once per page costs about
0.75 µs of Python per page (1.3 M pages/s here) and holds the GIL, so hashing could not
overlap the reads. This module computes exactly the same function -- ``XXH3_64bits_withSeed``
for inputs of 4,096 bytes -- over a whole buffer of pages in one compiled loop that releases
the GIL: about 1.7 M pages/s (7 GB/s) per core on the reference VM. The capture prefers the
library's own C function, called from its compiled read loop (:func:`library_xxh3`,
:mod:`planner.capture.memread`); this copy is the fallback where that function cannot be
found, and what the single pages re-read after a short read are hashed with.

Why a hand-written copy of a library's function: no Python binding of xxHash hashes many
fixed-size blocks in one call, the binding's C symbols are an implementation detail of its
build (found by :func:`library_xxh3`, not promised), and the trace format fixes the function
(``hash_algo`` ``xxh3_64-seeded``): traces captured with the same key must stay comparable
hash for hash whichever of the two computed them.
``tests/capture/test_xxh3.py`` holds this implementation to the ``xxhash`` library on
random, zero and patterned pages under several seeds (0, 1, 2^64 - 1, random).

The algorithm (xxHash 0.8, "long" inputs above 240 bytes) for one 4,096-byte page:
the 192-byte default secret is turned into a custom secret by adding the seed to each
little-endian 64-bit word of even index and subtracting it from each odd one; eight 64-bit
accumulators start from fixed primes; the page is consumed in 64-byte stripes, 16 per
1,024-byte block, each stripe adding its words into the swapped neighbour lane and the
32x32-bit product of (word xor secret word) into its own lane; after each full block the
accumulators are scrambled with the secret's last 64 bytes; the last partial block (15
stripes) and a final stripe ending at byte 4,096 (secret offset 121) follow; the eight lanes
are folded pairwise with 128-bit products against the secret from offset 11, and avalanched.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np
import numpy.typing as npt

from planner._jit import njit_cached

if TYPE_CHECKING:
    from collections.abc import Callable

PAGE_BYTES: Final = 4096
PAGE_WORDS: Final = PAGE_BYTES // 8
_M64: Final = (1 << 64) - 1

#: ``XXH3_kSecret``, the algorithm's 192-byte default secret (a constant of xxHash).
K_SECRET: Final = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)

_U = np.uint64
_P32_1 = _U(0x9E3779B1)
_P32_2 = _U(0x85EBCA77)
_P32_3 = _U(0xC2B2AE3D)
_P64_1 = _U(0x9E3779B185EBCA87)
_P64_2 = _U(0xC2B2AE3D27D4EB4F)
_P64_3 = _U(0x165667B19E3779F9)
_P64_4 = _U(0x85EBCA77C2B2AE63)
_P64_5 = _U(0x27D4EB2F165667C5)
_PRIME_MX1 = _U(0x165667919E3779F9)
_LOW32 = _U(0xFFFFFFFF)
_S32 = _U(32)
_PAGE_LEN_PRIME = _U((PAGE_BYTES * 0x9E3779B185EBCA87) & _M64)


@dataclass(frozen=True)
class PageSecret:
    """The parts of the seeded secret the page hash reads, as little-endian 64-bit words.

    ``words`` are the 24 aligned words (stripes read words ``s .. s + 7`` for stripe ``s``;
    the scramble reads words 16-23); ``last`` the 8 words from byte 121 (the final stripe);
    ``merge`` the 8 words from byte 11 (the final fold). Derived from the seed only: it is
    as secret as the seed and never leaves the capturing process.
    """

    words: npt.NDArray[np.uint64]
    last: npt.NDArray[np.uint64]
    merge: npt.NDArray[np.uint64]
    seed: int = 0
    """The seed itself (the ``xxhash`` library's function takes it rather than the secret)."""

    @classmethod
    def from_seed(cls, seed: int) -> PageSecret:
        """``XXH3_initCustomSecret`` for ``seed`` (the default secret for seed 0)."""
        seed &= _M64
        base = np.frombuffer(K_SECRET, dtype="<u8")
        custom = bytearray()
        for i in range(0, len(base), 2):
            custom += ((int(base[i]) + seed) & _M64).to_bytes(8, "little")
            custom += ((int(base[i + 1]) - seed) & _M64).to_bytes(8, "little")
        secret = bytes(custom)

        def words(offset: int, count: int) -> npt.NDArray[np.uint64]:
            raw = np.frombuffer(secret[offset : offset + 8 * count], dtype="<u8")
            return raw.astype(np.uint64)

        return cls(words=words(0, 24), last=words(121, 8), merge=words(11, 8), seed=seed)

    def __repr__(self) -> str:  # derived from the seed: keep it out of logs
        return "PageSecret(...)"


def _fold128(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    """Low xor high half of the 128-bit product ``a * b`` (``XXH3_mul128_fold64``)."""
    lo_lo = (a & _LOW32) * (b & _LOW32)
    hi_lo = (a >> _S32) * (b & _LOW32)
    lo_hi = (a & _LOW32) * (b >> _S32)
    hi_hi = (a >> _S32) * (b >> _S32)
    cross = (lo_lo >> _S32) + (hi_lo & _LOW32) + lo_hi
    upper = (hi_lo >> _S32) + (cross >> _S32) + hi_hi
    lower = (cross << _S32) | (lo_lo & _LOW32)
    return lower ^ upper


def _stripe(
    acc: Any, data: Any, at: int, key: Any, key_at: int
) -> None:  # pragma: no cover - compiled
    for lane in range(8):
        value = data[at + lane]
        keyed = value ^ key[key_at + lane]
        acc[lane ^ 1] += value
        acc[lane] += (keyed & _LOW32) * (keyed >> _S32)


def _hash_pages(
    data: Any, first: int, count: int, words: Any, last: Any, merge: Any, out: Any
) -> None:  # pragma: no cover - compiled
    """``out[i]`` = keyed xxh3_64 of page ``first + i`` of ``data`` (uint64 words)."""
    acc = np.empty(8, np.uint64)
    for i in range(count):
        base = (first + i) * 512
        acc[0] = _P32_3
        acc[1] = _P64_1
        acc[2] = _P64_2
        acc[3] = _P64_3
        acc[4] = _P64_4
        acc[5] = _P32_2
        acc[6] = _P64_5
        acc[7] = _P32_1
        for block in range(3):  # three full blocks of 16 stripes, each then scrambled
            for s in range(16):
                _stripe(acc, data, base + block * 128 + s * 8, words, s)
            for lane in range(8):
                a = acc[lane]
                a ^= a >> _U(47)
                a ^= words[16 + lane]
                acc[lane] = a * _P32_1
        for s in range(15):  # the last partial block
            _stripe(acc, data, base + 384 + s * 8, words, s)
        _stripe(acc, data, base + 504, last, 0)  # the stripe ending at byte 4096
        result = _PAGE_LEN_PRIME
        for k in range(4):
            result += _fold128(acc[2 * k] ^ merge[2 * k], acc[2 * k + 1] ^ merge[2 * k + 1])
        result ^= result >> _U(37)
        result *= _PRIME_MX1
        result ^= result >> _S32
        out[i] = result


_KERNEL: Callable[..., None] | None = None
_KERNEL_LOCK = threading.Lock()


def _kernel() -> Callable[..., None]:
    """The compiled hash (numba is imported and the kernel compiled, or loaded from numba's
    cache, on first use: importing the capture must not cost the command line a second)."""
    global _KERNEL
    with _KERNEL_LOCK:
        if _KERNEL is None:
            options: dict[str, Any] = {"nogil": True}
            # the helpers become compiled functions before the kernel that inlines them
            # is compiled (numba resolves them as module globals then)
            for name in ("_fold128", "_stripe"):
                globals()[name] = njit_cached(globals()[name], inline="always", **options)
            _KERNEL = cast("Callable[..., None]", njit_cached(_hash_pages, **options))
        return _KERNEL


def compiled_kernel() -> Callable[..., None]:
    """The compiled hash of many pages (for compiled callers): ``(data words, first page,
    count, secret.words, secret.last, secret.merge, out)``."""
    return _kernel()


def hash_pages(
    secret: PageSecret,
    buffer: npt.NDArray[np.uint8] | memoryview | bytearray,
    count: int,
    *,
    first: int = 0,
    out: npt.NDArray[np.uint64] | None = None,
) -> npt.NDArray[np.uint64]:
    """Keyed hashes of pages ``first .. first + count - 1`` of ``buffer`` (GIL released).

    ``buffer`` holds whole 4 KiB pages; its start must be 8-byte aligned (numpy and
    ``bytearray`` buffers are).
    """
    words = np.frombuffer(buffer, dtype=np.uint64)
    if (first + count) * PAGE_WORDS > len(words):
        raise ValueError(f"buffer holds {len(words) // PAGE_WORDS} pages, not {first + count}")
    if out is None:
        out = np.empty(count, np.uint64)
    if count:
        _kernel()(words, first, count, secret.words, secret.last, secret.merge, out)
    return out


_LIBRARY: list[Any] = []  # [the ctypes function or None] once looked up


def library_xxh3() -> Any:
    """The ``xxhash`` library's own ``XXH3_64bits_withSeed`` as a ctypes function, or ``None``.

    The Python package ``xxhash`` compiles the reference C implementation into its extension
    module (or links the system's ``libxxhash``), whose symbols are visible to ``dlsym``;
    called on a page that is still in the cache it hashes 4-5 times faster than
    :func:`hash_pages` (SIMD code; docs/capture.md §5.2). The compiled read loop of
    :mod:`planner.capture.memread` calls it through its address, without the GIL. It is used
    only if it is found and gives the library's Python result on a test page under a
    non-zero seed; else ``None`` (the capture then hashes with :func:`hash_pages`).
    """
    with _KERNEL_LOCK:
        if not _LIBRARY:
            _LIBRARY.append(_find_library_xxh3())
        return _LIBRARY[0]


def _find_library_xxh3() -> Any:
    import ctypes

    import xxhash

    try:
        module = importlib.import_module("xxhash._xxhash")
        fn = ctypes.CDLL(module.__file__).XXH3_64bits_withSeed
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    fn.restype = ctypes.c_uint64
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64)
    page = (bytes(range(256)) * (PAGE_BYTES // 256))[::-1]
    seed = 0x9E3779B97F4A7C15
    buf = ctypes.create_string_buffer(page, PAGE_BYTES)
    if fn(ctypes.addressof(buf), PAGE_BYTES, seed) != xxhash.xxh3_64_intdigest(page, seed=seed):
        return None
    return fn


def warm_up() -> None:
    """Compile (or load from numba's cache) the page hash before a timed snapshot starts."""
    hash_pages(PageSecret.from_seed(0), np.zeros(PAGE_BYTES, np.uint8), 1)
    library_xxh3()


__all__ = [
    "K_SECRET",
    "PAGE_BYTES",
    "PageSecret",
    "compiled_kernel",
    "hash_pages",
    "library_xxh3",
    "warm_up",
]

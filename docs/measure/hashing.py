"""Page hashing from Python: the keyed xxh3 the capture uses against the alternatives.

Used for docs/capture.md §5.2. Hashes the same 65,536 random 4 KiB pages (256 MiB) with
``xxh3_64`` (seeded) one call per page over memoryview slices -- the capture's way, see
:meth:`planner.capture.hashing.PageHasher.hash_pages` -- with one ``xxh3_64`` call over the
whole buffer (the C speed, the ceiling), with ``hashlib.blake2b`` (8-byte digest, keyed
hashing from the standard library), and times numpy's all-zero test. Best of 3 rounds.

Run from the repository root: ``.venv/bin/python docs/measure/hashing.py`` (no root needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import xxhash

if TYPE_CHECKING:
    from collections.abc import Callable

PAGES = 65536
PAGE = 4096


def pages_per_s(fn: Callable[[], object], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return PAGES / best


def main() -> int:
    buf = memoryview(bytearray(os.urandom(PAGES * PAGE)))
    h = xxhash.xxh3_64_intdigest
    key = b"k" * 32
    words = np.frombuffer(buf, dtype=np.uint64).reshape(PAGES, PAGE // 8)
    out = {
        "xxh3_per_page_pages_per_s": pages_per_s(
            lambda: [h(buf[o : o + PAGE], seed=5) for o in range(0, PAGES * PAGE, PAGE)]
        ),
        "xxh3_whole_buffer_pages_per_s": pages_per_s(lambda: h(buf, seed=5)),
        "blake2b_keyed_per_page_pages_per_s": pages_per_s(
            lambda: [
                hashlib.blake2b(buf[o : o + PAGE], digest_size=8, key=key).digest()
                for o in range(0, PAGES * PAGE, PAGE)
            ],
            rounds=1,
        ),
        "numpy_all_zero_test_pages_per_s": pages_per_s(lambda: ~words.any(axis=1)),
    }
    print(json.dumps({k: round(v) for k, v in out.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

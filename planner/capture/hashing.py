"""Keyed page hashing: seeded ``xxh3_64`` over each 4 KiB page of a buffer.

Pages are hashed as they are read, in the compiled read loop of
:mod:`planner.capture.memread`, by the ``xxhash`` library's own C function
(:func:`planner.capture.xxh3.library_xxh3`) or, where it cannot be found, by
:func:`planner.capture.xxh3.hash_pages` (the same function compiled for many pages at once);
neither holds the GIL. One ``xxhash`` call per page over memoryview slices
(:meth:`PageHasher.hash_pages`, 1.3-1.4 M pages/s with the GIL held) remains for single pages
and as the reference the tests compare with. Keyed
blake2b would be 11 times slower (docs/capture.md §5.2). A zero page is recognised by
comparing its hash with the keyed hash of 4096 zero bytes (no separate zero scan).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
import xxhash

from planner.capture.procfs import PAGE_SIZE_BYTES
from planner.capture.xxh3 import PageSecret

if TYPE_CHECKING:
    from planner.capture.keys import CaptureKey

_ZERO_PAGE: Final = bytes(PAGE_SIZE_BYTES)


class PageHasher:
    """Hash pages and other capture data with the seed of one :class:`CaptureKey`."""

    __slots__ = ("_seed", "key_id", "secret", "zero_hash")

    def __init__(self, key: CaptureKey) -> None:
        self._seed = key.seed
        self.key_id = key.key_id
        self.secret = PageSecret.from_seed(key.seed)
        """The seeded secret of the compiled page hash (:mod:`planner.capture.xxh3`)."""
        self.zero_hash: int = xxhash.xxh3_64_intdigest(_ZERO_PAGE, seed=self._seed)
        """The keyed hash of an all-zero page (``snapshots.zero_hash``)."""

    def __repr__(self) -> str:
        return f"PageHasher(key_id={self.key_id!r})"

    def hash_bytes(self, data: bytes | memoryview) -> int:
        """The keyed hash of ``data`` (a page, a command line, ...)."""
        return int(xxhash.xxh3_64_intdigest(data, seed=self._seed))

    def hash_pages(self, view: memoryview, npages: int) -> list[int]:
        """Keyed hashes of the first ``npages`` 4 KiB pages of ``view``, in order."""
        h = xxhash.xxh3_64_intdigest
        seed = self._seed
        ps = PAGE_SIZE_BYTES
        return [h(view[o : o + ps], seed=seed) for o in range(0, npages * ps, ps)]

    def hash_pages_array(self, view: memoryview, npages: int) -> npt.NDArray[np.uint64]:
        """:meth:`hash_pages` as a uint64 array."""
        return np.array(self.hash_pages(view, npages), dtype=np.uint64)

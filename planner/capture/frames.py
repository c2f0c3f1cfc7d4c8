"""Opaque frame ids: PFNs renumbered in first-seen order, stable for a capture session.

Raw PFNs never leave the capturing process (they help Rowhammer-style attacks, which is why
the kernel hides them from non-root). Each PFN gets the next small integer the first time a
snapshot shows it; later snapshots of the same session map it to the same id. Ids are thus
small and, in page order, mostly sequential -- which delta encoding stores in about a byte.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class FrameIds:
    """PFN -> frame id, assigned in first-seen order and kept for the whole session.

    Examples
    --------
    >>> f = FrameIds()
    >>> f.assign(np.array([900, 500, 900], np.uint64)).tolist()
    [0, 1, 0]
    >>> f.assign(np.array([7, 500], np.uint64)).tolist()
    [2, 1]
    """

    def __init__(self) -> None:
        self._pfns = np.empty(0, dtype=np.uint64)  # sorted
        self._ids = np.empty(0, dtype=np.uint64)  # id of _pfns[i]

    def __len__(self) -> int:
        return len(self._pfns)

    def assign(self, pfns: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        """The frame ids of ``pfns`` (in row order; new PFNs numbered by first occurrence)."""
        if len(pfns) == 0:
            return np.empty(0, dtype=np.uint64)
        uniq, first, inverse = np.unique(pfns, return_index=True, return_inverse=True)
        pos = np.searchsorted(self._pfns, uniq)
        known = pos < len(self._pfns)
        known[known] = self._pfns[pos[known]] == uniq[known]
        uid = np.empty(len(uniq), dtype=np.uint64)
        uid[known] = self._ids[pos[known]]
        new = np.flatnonzero(~known)
        if len(new):
            order = new[np.argsort(first[new], kind="stable")]
            uid[order] = np.arange(len(self._pfns), len(self._pfns) + len(order), dtype=np.uint64)
            self._pfns = np.insert(self._pfns, pos[new], uniq[new])
            self._ids = np.insert(self._ids, pos[new], uid[new])
        return uid[inverse.reshape(-1)]

"""Dense ids of 64-bit values (content hashes), in order of first appearance.

One open-addressing table with linear probing, kept at most half full, whose slots hold the
value and its id side by side (12 bytes, packed): a probe reads one slot, usually one cache
line. The table is larger than the caches for any real snapshot (a 4 M-page snapshot: 8 M
slots, 96 MB), so a row costs about one cache miss; with the value and the id in two arrays,
as before, it cost two (the 12 M hashes of a 4 M-page trace: 0.39-0.42 s -> 0.31-0.35 s,
docs/engine.md, "End to end", ``info``'s fourth round).

Used by the engine's content catalog (ids that stay the same over a whole replay) and by
``info``'s static potential (one table per snapshot). Every scratch array is allocated by
numpy, not inside the compiled code: numpy asks for transparent huge pages for large arrays,
which makes random accesses into tables of tens of MB faster (fewer TLB misses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from planner._jit import compiled_on_first_call

U64 = npt.NDArray[np.uint64]
I32 = npt.NDArray[np.int32]
Arr = npt.NDArray[Any]

#: One slot: the value, and its id + 1 (0: a free slot).
SLOT = np.dtype([("value", np.uint64), ("id1", np.int32)], align=False)
#: One slot of a :class:`FingerprintIdTable`: the value's low 32 bits (its fingerprint),
#: and its id + 1.
FP_SLOT = np.dtype([("value", np.uint32), ("id1", np.int32)], align=False)
#: the bits of a value a slot holds: all of them, or a fingerprint's
_ALL_BITS = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW_BITS = np.uint64(0xFFFFFFFF)

#: Fibonacci hashing's multiplier (2^64 / the golden ratio); the slot is taken from the
#: product's upper 32 bits, which mix every bit of the value.
_GOLDEN = 0x9E3779B97F4A7C15


class IdTable:
    """Dense ids of 64-bit values: each distinct value gets the next id when first seen.

    ``n`` is the number of ids given; :meth:`values` the value of each (8 bytes an id).
    The table is rebuilt twice as large from those values (its ids kept, the old slots
    freed first) whenever a call would fill it more than half; sized for ``expected``
    values, it is not rebuilt before they have been seen. Without ``keep_values`` (a
    table used once, as ``info``'s per snapshot) it holds no values and is never rebuilt:
    sized for ``expected`` values, it refuses a call that could bring more.
    """

    #: The fraction of its slots a table fills before it is rebuilt (linear probing: a
    #: half-full table takes 1.5 probes a hit and 2.5 a miss on average).
    max_fill = 0.5
    #: The slots' layout, the bits of a value a slot holds, and whether a match of those
    #: bits is confirmed by the value of the slot's id (a fingerprint's).
    slot = SLOT
    bits = _ALL_BITS
    confirm = False

    def __init__(self, expected: int = 0, *, keep_values: bool = True) -> None:
        self._slots = free_slots(table_slots(expected, self.max_fill), self.slot)
        self._keep_values = keep_values
        # the value of each id (first n valid), if kept
        self._value_of = np.empty(expected if keep_values else 0, np.uint64)
        self.n = 0

    def value_view(self) -> U64:
        """The value of every id, in id order, as a read-only view (valid until the next
        call that brings new values)."""
        if not self._keep_values:
            raise ValueError("this table does not keep the value of each id")
        out = self._value_of[: self.n]  # (a view of its own)
        out.flags.writeable = False
        return out

    def values(self) -> U64:
        """The value of every id, in id order (a copy)."""
        return self.value_view().copy()

    @property
    def capacity(self) -> int:
        """Distinct values the table takes before it is rebuilt (:attr:`max_fill` of its
        slots)."""
        return int(self._slots.size * self.max_fill)

    def clear(self) -> None:
        """Forget every value (no ids given, every slot free) and keep the memory: a table
        used for one snapshot after another is faulted in once, not once per snapshot
        (``info``: docs/engine.md, "Tables kept from snapshot to snapshot")."""
        self._slots.view(np.uint8)[:] = 0
        self.n = 0

    @property
    def table_bytes(self) -> int:
        """Bytes held: the slots and the value of each id."""
        return int(self._slots.nbytes + self._value_of.nbytes)

    def _reserve(self, more: int) -> None:
        """Room for ``more`` new values: the slots rebuilt larger if they would be filled
        past :attr:`max_fill`, and the values' array grown (by a quarter at least, to at
        most the slots' capacity)."""
        need = self.n + more
        if not self._keep_values:
            if need > self.capacity:
                raise ValueError(
                    f"a table without its values holds at most {self.capacity} "
                    f"distinct values; {need} could be"
                )
            return
        if need > self.capacity:  # the old slots freed first
            self._slots = _NO_SLOTS
            self._slots = free_slots(table_slots(need, self.max_fill), self.slot)
            _insert_values(self._slots, self._value_of[: self.n], self.bits)
        if need > self._value_of.size:
            size = self._value_of.size
            grown = np.empty(min(max(need, size + size // 4), self.capacity), np.uint64)
            grown[: self.n] = self._value_of[: self.n]
            self._value_of = grown

    def _probe(self, values: U64, out: I32, first: Arr) -> int:
        """Ids of ``values`` into ``out`` (compiled); returns the new number of ids."""
        n = _ids(self._slots, self._value_of, self.n, values, out, first, self.bits, self.confirm)
        return int(n)

    def ids_of(self, values: Arr, first: Arr | None = None, out: I32 | None = None) -> I32:
        """Ids of ``values`` (integers, taken as unsigned 64-bit); new values get the next
        ids in order of first appearance. ``first`` (booleans, one per value, all False):
        set True at the row where a value got its id. ``out``: where the ids go (int32,
        one per value), else a new array.

        A table that keeps its values is filled in steps, each no larger than the room
        left, and rebuilt (at most twice as large) only when the room runs low: a call
        whose values are mostly known (a snapshot in which restarted workers bring back
        the contents of the ones before) does not rebuild it for the worst case of all of
        them new (docs/engine.md, "The content catalog grows with its contents"). An
        empty table is sized for all of them at once, as before."""
        values = _unsigned(values)
        for name, given, dtype in (("first", first, np.bool_), ("out", out, np.int32)):
            if given is not None and (given.dtype != dtype or given.shape != values.shape):
                raise ValueError(f"{name} must be {np.dtype(dtype).name}, one per value")
        ids = np.empty(values.size, np.int32) if out is None else out
        mark = _NO_FIRST if first is None else first
        if not self._keep_values or self.n == 0:
            self._reserve(values.size)
            self.n = int(self._probe(values, ids, mark))
            return ids
        done = 0
        while done < values.size:
            left = values.size - done
            room = self.capacity - self.n
            if room < left and room < self.capacity // 4:  # low: at most twice as large
                self._reserve(min(left, self.capacity))
                room = self.capacity - self.n
            step = min(left, room)
            self._reserve(step)  # (the values' array; the slots have the room)
            end = done + step
            part_mark = mark if mark.size == 0 else mark[done:end]
            self.n = int(self._probe(values[done:end], ids[done:end], part_mark))
            done = end
        return ids


_NO_FIRST = np.zeros(0, np.bool_)
_NO_SLOTS = np.zeros(0, SLOT)


def free_slots(n: int, slot: np.dtype[Any] = SLOT) -> Arr:
    """``n`` free slots, written once here (zeroed by numpy, which lets other threads run
    meanwhile) rather than left to be faulted in by the compiled probes: a probe reads its
    slot before it writes it, so a slot page first touched there is faulted twice, once
    for the shared zero page and again, with a TLB flush, for its own page; and a table
    made while the compiled code is still loading is in memory by the time it is
    (``info``'s first snapshot: docs/engine.md, "Slot tables written before they are
    probed")."""
    slots = np.empty(n, slot)
    slots.view(np.uint8)[:] = 0
    return slots


def table_slots(n: int, max_fill: float = 0.5) -> int:
    """Slots of an open-addressing table for ``n`` values, filled at most ``max_fill``
    (half by default): the least power of two, at least 16, whose ``max_fill`` holds
    ``n``. The tables built elsewhere in Python (``planner.whatif.writes``) size theirs by
    it too."""
    cap = 16
    while int(cap * max_fill) < n:
        cap *= 2
    return cap


def _unsigned(values: Arr) -> U64:
    """``values`` as contiguous read-only unsigned 64-bit integers (a view when they are
    64-bit): compiled code is specialised on the array type, writability included, so its
    input is always read-only (Arrow's buffers are) and one compiled version serves."""
    values = np.ascontiguousarray(values)
    if values.dtype in (np.uint64, np.int64):
        out = values.view(np.uint64)
    else:
        out = values.astype(np.uint64)
    if out.flags.writeable:
        out = out.view()
        out.flags.writeable = False
    return out


#: Rows ahead whose slot :func:`_ids` prefetches: enough misses in flight to cover a
#: miss's latency, few enough that the lines are still cached when their row comes (16:
#: 0.09-0.10 s -> 0.065-0.075 s for 4 M random hashes into 8 M slots, against 4 and 8
#: rows slower and 32 no better; docs/engine.md, "Counting as the batches come").
_PREFETCH_ROWS = 16

#: Placeholder for :func:`planner._jit.INTRINSICS`'s ``prefetch``, set just before the
#: functions that call it are compiled (importing this module does not import numba).
prefetch: Any = None


@compiled_on_first_call(cache=True, nogil=True, intrinsics=("prefetch",))
def _ids(
    slots: Arr, value_of: U64, n: int, values: U64, out: I32, first: Arr, bits: Any, confirm: bool
) -> int:  # pragma: no cover - compiled
    """Probe (and insert) every value of ``values``; returns the new number of ids. The
    value of each new id goes to ``value_of`` unless it is empty (values not kept). The
    slot of the value :data:`_PREFETCH_ROWS` rows ahead is prefetched. A slot holds the
    ``bits`` of a value (all, or a fingerprint's, when a match is confirmed by the value
    of the slot's id: ``confirm``)."""
    mask = slots.size - 1
    mark = first.size > 0
    keep = value_of.size > 0
    ahead = values.size - _PREFETCH_ROWS
    for j in range(values.size):
        if j < ahead:
            w = values[j + _PREFETCH_ROWS]
            prefetch(slots, np.int64((w * np.uint64(_GOLDEN)) >> np.uint64(32)) & mask)
        v = values[j]
        held = v & bits
        i = np.int64((v * np.uint64(_GOLDEN)) >> np.uint64(32)) & mask
        while True:
            g = slots[i].id1
            if g == 0:
                slots[i].value = held
                slots[i].id1 = n + 1
                if keep:
                    value_of[n] = v
                out[j] = n
                if mark:
                    first[j] = True
                n += 1
                break
            if slots[i].value == held and (not confirm or value_of[g - 1] == v):
                out[j] = g - 1
                break
            i = (i + 1) & mask
    return n


@compiled_on_first_call(cache=True, nogil=True)
def _insert_values(slots: Arr, value_of: U64, bits: Any) -> None:  # pragma: no cover - compiled
    """Insert ids ``0..n-1`` of the distinct values ``value_of`` into the empty ``slots``
    (each slot holding the ``bits`` of its value)."""
    mask = slots.size - 1
    for g in range(value_of.size):
        v = value_of[g]
        i = np.int64((v * np.uint64(_GOLDEN)) >> np.uint64(32)) & mask
        while slots[i].id1 != 0:
            i = (i + 1) & mask
        slots[i].value = v & bits
        slots[i].id1 = g + 1


class FingerprintIdTable(IdTable):
    """An :class:`IdTable` that keeps its values and holds in each slot the value's low 32
    bits (a fingerprint) beside its id: 8 bytes a slot, not 12. A probe whose fingerprint
    matches reads the value of the slot's id to be sure (one more memory access a value
    found, none a value new). For a table that lives long beside other large arrays (the
    engine's content catalog: 2^25 slots, 403 -> 268 MB at a 16 M-page host; docs/engine.md,
    "A catalog of fingerprints")."""

    slot = FP_SLOT
    bits = _LOW_BITS
    confirm = True

    def __init__(self, expected: int = 0) -> None:
        super().__init__(expected, keep_values=True)


__all__ = ["FP_SLOT", "SLOT", "FingerprintIdTable", "IdTable", "table_slots"]

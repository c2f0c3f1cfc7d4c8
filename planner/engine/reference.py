"""The reference model: ksmd, one page at a time, in plain Python. It is the oracle.

It follows docs/kernel-semantics.md (§4 the ksmd loop, §5 cmp_and_merge_page in the 6.11+
order, §6 lazy removal, §7 smart scan, §8 the advisor, §11 the state machine) and
mm/ksm.c of Linux 6.12+ closely enough to be checked line by line. It is slow on purpose:
the vectorized engine is held to it by property tests, and both are held to the real
kernel by the conformance and ``validate --kernel`` tests.

Model decisions where a hash-based replay cannot see what the kernel sees (documented in
docs/engine.md):

* trees are keyed by content hash; a stable-tree walk (a search after the checksum gate, or
  the insert after a new merge) passes by every stale node and every chain: stale nodes
  are removed, chains are pruned/collapsed as ``stable_node_dup()`` does. In the kernel
  only the nodes on the rb-tree path are visited; with many searches per scan the
  difference is in *when* within a scan this happens;
* the prune clock of chains (``stable_node_chains_prune_millisecs``) is read when a full
  scan starts, so a chain is pruned at most once per full scan (the kernel reads jiffies at
  each walk; the two agree when a full scan is one batch);
* an unstable-tree entry whose page changed or vanished since insertion is dropped: later
  searches do not find it (the kernel may find it by its new content, or abort the search);
* physical pages are tracked as entities: unchanged rows keep theirs, forked children map
  their parent's, a write gets a fresh one (see :mod:`planner.engine.prepare`).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from planner.engine.cost import PATHS, tree_levels
from planner.engine.driver import BatchPlan, BatchRun
from planner.engine.result import (
    N_ROW,
    R_CHAINS,
    R_DUPS,
    R_FRAMES_WITH,
    R_FRAMES_WITHOUT,
    R_FULL_SCANS,
    R_KSM_PAGES,
    R_RMAP,
    R_SCANNED,
    R_SHARED,
    R_SHARING,
    R_SKIPPED,
    R_STABLE_NODES,
    R_UNSHARED,
    R_ZERO,
    process_counters,
)
from planner.engine.rows import F_ELIGIBLE, F_THP, F_ZERO
from planner.engine.timing import NS_PER_MS, next_batch_ns
from planner.engine.writes import HELD_BASE, RESTORE, SAME, Writes, held_content

if TYPE_CHECKING:
    from planner.engine.knobs import KsmKnobs
    from planner.engine.prepare import ReplayInput
    from planner.engine.rows import SnapshotRows

ZERO = -1  # phys value of a PTE mapping the kernel zero page (use_zero_pages)
VOLATILE = 1 << 64  # a write's content id v is content VOLATILE + v (no snapshot hash)
NONE, UNSTABLE, STABLE = 0, 1, 2
THP_SHIFT = 9  # 512 x 4 KiB = 2 MiB


def skip_age(age: int) -> int:
    """How many scans smart scan skips a page of a given age (mm/ksm.c skip_age)."""
    if age <= 3:
        return 1
    if age <= 5:
        return 2
    if age <= 8:
        return 4
    return 8


class _Item:
    """An rmap_item: ksmd's record of one (mm, address)."""

    __slots__ = ("age", "fresh", "has_sum", "mm", "node", "oldsum", "page", "rem", "state", "ukey")

    def __init__(self, mm: int, page: int) -> None:
        self.mm = mm
        self.page = page
        self.state = NONE
        self.node: _Node | None = None
        self.oldsum = 0
        self.has_sum = False  # oldchecksum is 0 on a fresh item: the first visit never matches
        self.fresh = True
        self.age = 0
        self.rem = 0
        self.ukey = 0  # content hash under which it sits in the unstable tree


@dataclass(eq=False)
class _Node:
    """A stable node: one KSM page (plain, or a dup in a chain)."""

    key: int
    entity: int
    items: set[_Item] = field(default_factory=set)
    chain: _Chain | None = None
    dead: bool = False


@dataclass(eq=False)
class _Chain:
    """A stable_node chain: dups with the same content (created by max_page_sharing)."""

    key: int
    prune_ns: int
    dups: list[_Node] = field(default_factory=list)  # head first
    dead: bool = False


class ReferenceEngine:
    """Replays a :class:`ReplayInput` page by page (a :class:`planner.engine.driver.Core`)."""

    name = "reference"

    def __init__(self, inp: ReplayInput, knobs: KsmKnobs) -> None:
        self.inp = inp
        self.k = knobs
        self.page_size = inp.page_size
        self.M = knobs.max_page_sharing
        # physical world
        self.snap_i = -1
        self.snap: SnapshotRows | None = None
        self.phys: list[int] = []
        self.row_of: dict[tuple[int, int], int] = {}
        self.ent_mappers: Counter[int] = Counter()
        self.ent_node: dict[int, _Node] = {}
        self.next_entity = 0
        self.stale_watch: set[int] = set()  # entities with nodes whose last mapper went away
        self.split_thp: set[tuple[int, int]] = set()
        self.whash: dict[int, int] = {}  # rows whose content a write changed: the content now
        self.held_zero: set[int] = set()  # rows of whash holding a zero-filled content
        # ksmd
        self.slots: list[int] = []
        self.cursor: int | None = None  # mm the scan cursor is on; None = the list head
        self.cursor_page = 0
        self.exited: set[int] = set()
        self.items: dict[int, dict[int, _Item]] = {}
        self.item_pages: dict[int, list[int]] = {}
        self.stable: dict[int, _Node | _Chain] = {}
        self.chains: list[_Chain] = []
        self.unstable: dict[int, _Item] = {}
        self.now_ns = 0
        self.scan_start_ns = 0  # the prune clock of stable_node chains (see module notes)
        # counters
        self.shared = self.sharing = self.unshared = self.rmap_items = 0
        self.scanned = self.skipped = self.seqnr = 0
        self.n_chains = self.n_dups = self.n_nodes = 0
        self.zero_pages = 0
        self.mm_rmap: Counter[int] = Counter()
        self.mm_merging: Counter[int] = Counter()
        self.mm_zero: Counter[int] = Counter()
        self._batch_paths: Counter[str] = Counter()
        #: unstable-tree levels walked in the current batch, per path (cost.tree_levels)
        self._batch_levels: Counter[str] = Counter()
        self.scan_inserts = 0  # unstable-tree inserts in the current full scan
        self._scan_ended = False
        #: optional debugging aid: (full scan, mm, page, path) of every visit, when a list
        self.visit_log: list[tuple[int, int, int, str]] | None = None

    # ------------------------------------------------------------------ physical world

    def _acquire(self, mm: int, e: int) -> None:
        if e == ZERO:
            self.zero_pages += 1
            self.mm_zero[mm] += 1
        else:
            self.ent_mappers[e] += 1

    def _release(self, mm: int, e: int) -> None:
        if e == ZERO:
            self.zero_pages -= 1
            self.mm_zero[mm] -= 1
        else:
            self.ent_mappers[e] -= 1
            if self.ent_mappers[e] == 0:
                del self.ent_mappers[e]
                if e in self.ent_node:
                    self.stale_watch.add(e)

    def apply_snapshot(self, k: int, now_ns: int) -> None:
        """The world moves to snapshot ``k`` (writes, forks, unmaps, exits, new processes)."""
        self.now_ns = now_ns
        self.whash = {}
        self.held_zero = set()
        new = self.inp.snapshots[k]
        old = self.snap
        tr = self.inp.transition(k)
        oldphys = self.phys
        phys = [0] * new.n
        base = self.next_entity
        for i in range(new.n):
            c = int(tr.carry_src[i])
            if c >= 0:
                phys[i] = oldphys[c]
        for i in range(new.n):
            if tr.carry_src[i] >= 0:
                continue
            j, o = int(tr.inherit_src[i]), int(tr.inherit_old[i])
            if j >= 0:
                phys[i] = phys[j]
            elif o >= 0:
                phys[i] = oldphys[o]
            else:
                phys[i] = base + int(tr.fresh_group[i])
        self.next_entity = base + tr.n_fresh
        # mappers: new mappings first, then the released old ones (counts only matter at the end)
        for i in range(new.n):
            if tr.carry_src[i] < 0:
                self._acquire(int(new.mm[i]), phys[i])
        if old is not None:
            for o in tr.released_old.tolist():
                self._release(int(old.mm[o]), oldphys[o])
        self.phys = phys
        self.row_of = {
            (int(m), int(p)): i
            for i, (m, p) in enumerate(zip(new.mm.tolist(), new.page.tolist(), strict=True))
        }
        self.snap_i = k
        self.snap = new
        # unstable entries whose page changed or vanished are dropped
        elig = new.eligible
        for key, it in list(self.unstable.items()):
            row = self.row_of.get((it.mm, it.page))
            if row is None or int(new.hash[row]) != key or phys[row] == ZERO or not elig[row]:
                del self.unstable[key]
        # exits (__ksm_exit)
        for mm in self.inp.exiting(k):
            self.exited.add(mm)
            for blk in [b for b in self.split_thp if b[0] == mm]:
                self.split_thp.discard(blk)
            if mm in self.slots and self.cursor != mm:
                self.slots.remove(mm)
                if self.items.get(mm):
                    at = 0 if self.cursor is None else self.slots.index(self.cursor) + 1
                    self.slots.insert(at, mm)
        # registrations (__ksm_enter): new processes, and madvise processes that gained a
        # mergeable mapping
        entering = self.inp.entering(k)
        later = [
            int(m)
            for m, ok in zip(new.mm_present.tolist(), new.mm_mergeable.tolist(), strict=True)
            if ok and int(m) not in entering and self.inp.mms[int(m)].registration.mode != "off"
        ]
        pos = {int(m): i for i, m in enumerate(new.mm_present.tolist())}
        for mm in entering + later:
            if mm in self.slots or mm in self.exited or not new.mm_mergeable[pos[mm]]:
                continue
            at = len(self.slots) if self.cursor is None else self.slots.index(self.cursor)
            self.slots.insert(at, mm)

    def apply_writes(self, writes: object, now_ns: int) -> int:
        """Writes between snapshots (:mod:`planner.engine.writes`); returns the merges broken.

        A write to a KSM page, the zero page or a page another mapping shares gives the row
        a fresh physical page (its rmap_item stays on the stable node until ksmd visits it,
        as ``_remove_from_tree`` then finds); a write to a private page keeps it. A content
        change sets the row's content (the checksum gate sees it at the next visit) and
        drops the row's unstable-tree entry, as ``apply_snapshot`` does. A row that a write
        gave a content is merged with the zero page only where that content is one other
        rows hold and zero-filled. Rows marked ``keep`` keep their physical page (the write
        model's restore and reapply around a synthetic snapshot: nothing is copied or
        broken).
        """
        assert isinstance(writes, Writes)
        self.now_ns = now_ns
        snap = self.snap
        assert snap is not None
        breaks = 0
        keep = [False] * len(writes) if writes.keep is None else writes.keep.tolist()
        for i, v, kept in zip(writes.rows.tolist(), writes.content.tolist(), keep, strict=True):
            e = self.phys[i]
            if not kept and (e == ZERO or e in self.ent_node or self.ent_mappers[e] > 1):
                if e != ZERO and e in self.ent_node:  # cow_ksm counts KSM pages only
                    breaks += 1
                self.next_entity += 1
                self._replace(i, self.next_entity - 1)
            if v == SAME:
                continue
            old = self._hash(i)
            self.held_zero.discard(i)
            if v == RESTORE:
                self.whash.pop(i, None)
            elif v <= HELD_BASE:  # a content other rows of the snapshot hold
                cid, zero = held_content(v)
                self.whash[i] = int(self.inp.content_hash[cid])
                if zero:
                    self.held_zero.add(i)
            else:
                self.whash[i] = VOLATILE + v
            if self._hash(i) != old:
                item = self.items.get(int(snap.mm[i]), {}).get(int(snap.page[i]))
                if item is not None and self.unstable.get(old) is item:
                    del self.unstable[old]
        return breaks

    def _hash(self, i: int) -> int:
        """Row ``i``'s content now: the snapshot's, or what a write made it."""
        h = self.whash.get(i)
        if h is not None:
            return h
        assert self.snap is not None
        return int(self.snap.hash[i])

    # ------------------------------------------------------------------ stable tree

    def _stale(self, node: _Node) -> bool:
        return self.ent_mappers[node.entity] == 0 if node.entity in self.ent_mappers else True

    def _candidate(self, node: _Node, offset: int = 0) -> bool:
        n = len(node.items)
        return n > 0 and n + offset < self.M

    def _remove_node(self, node: _Node) -> None:
        """remove_node_from_stable_tree: unlink every item at once, delete the node."""
        if node.items:
            self.shared -= 1
            self.sharing -= len(node.items) - 1
        for it in node.items:
            it.state = NONE
            it.node = None
            self.mm_merging[it.mm] -= 1
        node.items.clear()
        node.dead = True
        self.n_nodes -= 1
        if node.chain is not None:
            node.chain.dups.remove(node)
            self.n_dups -= 1
        elif self.stable.get(node.key) is node:
            del self.stable[node.key]
        self.ent_node.pop(node.entity, None)
        self.stale_watch.discard(node.entity)

    def _chain_visit(self, chain: _Chain, *, prune: bool) -> _Node | None:
        """stable_node_dup(): pick a dup; free stale dups met; collapse or free the chain."""
        if (
            prune
            and self.scan_start_ns
            >= chain.prune_ns + self.k.stable_node_chains_prune_ms * NS_PER_MS
        ):
            chain.prune_ns = self.scan_start_ns
        else:
            prune = False
        found: _Node | None = None
        for dup in list(chain.dups):
            if self._stale(dup):
                self._remove_node(dup)
                continue
            if found is None or (
                self._candidate(dup)
                and (not self._candidate(found) or len(dup.items) > len(found.items))
            ):
                found = dup
                if not prune and self._candidate(found):
                    break
        if found is not None:
            if len(chain.dups) == 1:  # one dup left: it becomes a plain node again
                self.stable[chain.key] = found
                found.chain = None
                chain.dead = True
                self.chains.remove(chain)
                self.n_chains -= 1
                self.n_dups -= 1
            elif chain.dups[0] is not found and self._candidate(found, 1):
                chain.dups.remove(found)
                chain.dups.insert(0, found)
        else:
            del self.stable[chain.key]
            chain.dead = True
            self.chains.remove(chain)
            self.n_chains -= 1
        return found

    def _walk(self, *, prune: bool, target: int) -> _Node | None:
        """A stable-tree walk: stale nodes are removed and chains visited (see module notes).

        Returns the dup chosen in ``target``'s chain, if ``target`` has a chain.
        """
        for e in list(self.stale_watch):
            node = self.ent_node.get(e)
            if node is not None and node.chain is None and self._stale(node):
                self._remove_node(node)
        chosen = None
        for chain in list(self.chains):
            if chain.dead:
                continue
            got = self._chain_visit(chain, prune=prune)
            if chain.key == target:
                chosen = got
        return chosen

    def _stable_search(self, key: int) -> _Node | None:
        chosen = self._walk(prune=True, target=key)
        slot = self.stable.get(key)
        if slot is None:
            return None
        node = chosen if isinstance(slot, _Chain) else slot
        return node if node is not None and self._candidate(node) else None

    def _stable_insert(self, key: int, entity: int) -> _Node:
        self._walk(prune=False, target=key)
        node = _Node(key=key, entity=entity)
        self.n_nodes += 1
        slot = self.stable.get(key)
        if slot is None:
            self.stable[key] = node
        else:
            if isinstance(slot, _Node):
                chain = _Chain(key=key, prune_ns=self.scan_start_ns, dups=[slot])
                slot.chain = chain
                self.stable[key] = chain
                self.chains.append(chain)
                self.n_chains += 1
                self.n_dups += 1
                slot_chain = chain
            else:
                slot_chain = slot
            slot_chain.dups.insert(0, node)
            node.chain = slot_chain
            self.n_dups += 1
        self.ent_node[entity] = node
        return node

    def _append(self, item: _Item, node: _Node) -> None:
        """stable_tree_append."""
        node.items.add(item)
        if len(node.items) == 1:
            self.shared += 1
        else:
            self.sharing += 1
        item.state = STABLE
        item.node = node
        self.mm_merging[item.mm] += 1

    def _remove_from_tree(self, item: _Item) -> None:
        """remove_rmap_item_from_tree: apply the lazy effects of COW, unmap, exit."""
        if item.state == STABLE:
            node = item.node
            assert node is not None
            if self._stale(node):
                self._remove_node(node)
                return
            node.items.discard(item)
            if node.items:
                self.sharing -= 1
            else:
                self.shared -= 1
            self.mm_merging[item.mm] -= 1
            item.state = NONE
            item.node = None
        elif item.state == UNSTABLE:
            self.unshared -= 1
            item.state = NONE
            if self.unstable.get(item.ukey) is item:
                del self.unstable[item.ukey]

    # ------------------------------------------------------------------ items and cursor

    def _free_item(self, item: _Item) -> None:
        self._remove_from_tree(item)
        del self.items[item.mm][item.page]
        self.rmap_items -= 1
        self.mm_rmap[item.mm] -= 1

    def _free_items(self, mm: int, lo: int, hi: int | None = None) -> None:
        """Free the items of ``mm`` at pages in [lo, hi) (hi None: to the end)."""
        pages = self.item_pages.get(mm)
        if not pages:
            return
        a = bisect.bisect_left(pages, lo)
        b = len(pages) if hi is None else bisect.bisect_left(pages, hi)
        for p in pages[a:b]:
            self._free_item(self.items[mm][p])
        del pages[a:b]

    def _get_item(self, mm: int, page: int) -> _Item:
        """get_next_rmap_item: free items passed over, reuse or allocate the one at ``page``."""
        self._free_items(mm, self.cursor_page, page)
        its = self.items.setdefault(mm, {})
        item = its.get(page)
        if item is None:
            item = _Item(mm, page)
            its[page] = item
            bisect.insort(self.item_pages.setdefault(mm, []), page)
            self.rmap_items += 1
            self.mm_rmap[mm] += 1
        return item

    def _is_ksm(self, i: int) -> bool:
        e = self.phys[i]
        return e != ZERO and e in self.ent_node

    def _should_skip(self, i: int, item: _Item) -> bool:
        if not self.k.smart_scan or self._is_ksm(i):
            return False
        age = item.age
        if age < 255:
            item.age = age + 1
        if age < 3:
            return False
        if item.rem == 0:
            item.rem = skip_age(age)
            return False
        self.skipped += 1
        item.rem -= 1
        self._remove_from_tree(item)
        self._batch_paths["skip"] += 1
        if self.visit_log is not None:
            self.visit_log.append((self.seqnr, item.mm, item.page, "skip"))
        return True

    def _next_slot(self, mm: int) -> int | None:
        i = self.slots.index(mm)
        return self.slots[i + 1] if i + 1 < len(self.slots) else None

    def _next_item(self) -> tuple[int, int, _Item] | None:
        """scan_get_next_rmap_item: the next page to handle, or None at the end of a full scan."""
        if self.cursor is None:
            return None
        snap = self.snap
        assert snap is not None
        while True:
            mm = self.cursor
            assert mm is not None
            if mm in self.exited:
                self._free_items(mm, 0)
                nxt = self._next_slot(mm)
                self.slots.remove(mm)
            else:
                lo, hi = snap.rows_of(mm)
                i = lo + int(np.searchsorted(snap.page[lo:hi], np.uint64(self.cursor_page)))
                while i < hi:
                    if snap.flags[i] & F_ELIGIBLE and self.phys[i] != ZERO:
                        page = int(snap.page[i])
                        item = self._get_item(mm, page)
                        self.cursor_page = page + 1
                        if not self._should_skip(i, item):
                            return mm, i, item
                    i += 1
                self._free_items(mm, self.cursor_page)
                nxt = self._next_slot(mm)
                if not snap.layout.is_mergeable(mm):
                    self.slots.remove(mm)  # no VM_MERGEABLE vma left: ksmd drops the mm
            if nxt is None:
                self.cursor = None
                self._scan_ended = True
                self.seqnr += 1
                return None
            self.cursor = nxt
            self.cursor_page = 0

    # ------------------------------------------------------------------ cmp_and_merge_page

    def _replace(self, i: int, entity: int) -> None:
        assert self.snap is not None
        mm = int(self.snap.mm[i])
        self._release(mm, self.phys[i])
        self.phys[i] = entity
        self._acquire(mm, entity)

    def _thp_block(self, i: int) -> tuple[int, int] | None:
        snap = self.snap
        assert snap is not None
        if not snap.flags[i] & F_THP:
            return None
        blk = (int(snap.mm[i]), int(snap.page[i]) >> THP_SHIFT)
        return None if blk in self.split_thp else blk

    def _split(self, i: int) -> None:
        blk = self._thp_block(i)
        if blk is not None:
            self.split_thp.add(blk)

    def _cmp_and_merge(self, mm: int, i: int, item: _Item) -> None:
        if self.visit_log is None:
            self._cmp_and_merge_inner(mm, i, item)
            return
        before = Counter(self._batch_paths)
        self._cmp_and_merge_inner(mm, i, item)
        (path,) = (self._batch_paths - before).keys()
        self.visit_log.append((self.seqnr, mm, item.page, path))

    def _cmp_and_merge_inner(self, mm: int, i: int, item: _Item) -> None:
        snap = self.snap
        assert snap is not None
        self.scanned += 1
        paths = self._batch_paths
        allocated_now = item.fresh  # a new rmap_item is handled on the visit that allocates it
        item.fresh = False
        node = self.ent_node.get(self.phys[i]) if self.phys[i] != ZERO else None
        if node is not None:
            if item.state == STABLE and item.node is node:
                paths["ksm_page"] += 1
                return
            # a KSM page whose item is elsewhere (a forked child): linked without the checksum gate
            self._remove_from_tree(item)
            self._append(item, node)
            paths["fork_join"] += 1
            return
        self._remove_from_tree(item)
        h = self._hash(i)
        if not item.has_sum or item.oldsum != h:
            paths["first_visit" if allocated_now else "volatile"] += 1
            item.oldsum = h
            item.has_sum = True
            return
        zero = i in self.held_zero if i in self.whash else snap.flags[i] & F_ZERO
        if self.k.use_zero_pages and zero:
            self._replace(i, ZERO)
            paths["zero_merge"] += 1
            return
        kdup = self._stable_search(h)
        if kdup is not None:
            self._split(i)
            self._replace(i, kdup.entity)
            self._append(item, kdup)
            paths["merge"] += 1
            return
        # unstable_tree_search_insert walks the tree built in this scan (cost.tree_levels)
        levels = tree_levels(self.scan_inserts)
        partner = self.unstable.get(h)
        if partner is not None:
            j = self.row_of[(partner.mm, partner.page)]
            if self.phys[j] == self.phys[i]:  # the same physical page (forked, not yet KSM)
                paths["no_merge"] += 1
                self._batch_levels["no_merge"] += levels
                return
            bi, bj = self._thp_block(i), self._thp_block(j)
            if bi is not None and bi == bj:  # both halves of one THP: split it, merge next time
                self.split_thp.add(bi)
                paths["no_merge"] += 1
                self._batch_levels["no_merge"] += levels
                return
            self._split(i)
            self._split(j)
            entity = self.phys[i]  # the scanned page becomes the KSM page, in place
            self._remove_from_tree(partner)
            self._replace(j, entity)
            node = self._stable_insert(h, entity)
            self._append(partner, node)
            self._append(item, node)
            paths["merge"] += 1
            self._batch_levels["merge"] += levels
            return
        self.unstable[h] = item
        item.state = UNSTABLE
        item.ukey = h
        self.unshared += 1
        self.scan_inserts += 1
        paths["unstable"] += 1
        self._batch_levels["unstable"] += levels

    # ------------------------------------------------------------------ observation

    def truth_now(self) -> tuple[int, int, int, int]:
        """(frames without KSM, frames with KSM, KSM pages, zero-page PTEs), from scratch."""
        if self.snap is None:
            return 0, 0, 0, 0
        with_ksm = {e for e in self.phys if e != ZERO}
        ksm = {e for e in with_ksm if e in self.ent_node}
        zero = sum(1 for e in self.phys if e == ZERO)
        return self.snap.n_frames, len(with_ksm), len(ksm), zero

    def state_row(self) -> npt.NDArray[np.int64]:
        """The counters and the truth now (a driver state row)."""
        row = np.zeros(N_ROW, np.int64)
        row[R_SHARED], row[R_SHARING], row[R_UNSHARED] = self.shared, self.sharing, self.unshared
        row[R_RMAP], row[R_SCANNED], row[R_SKIPPED] = self.rmap_items, self.scanned, self.skipped
        row[R_FULL_SCANS], row[R_CHAINS], row[R_DUPS] = self.seqnr, self.n_chains, self.n_dups
        row[R_ZERO] = self.zero_pages
        without, with_ksm, ksm, _ = self.truth_now()
        row[R_FRAMES_WITHOUT], row[R_FRAMES_WITH], row[R_KSM_PAGES] = without, with_ksm, ksm
        row[R_STABLE_NODES] = self.n_nodes + self.n_chains
        return row

    def ksm_rows(self) -> npt.NDArray[np.bool_]:
        """Per row of the current snapshot: whether it maps a KSM page now (what
        ``/proc/kpageflags`` KPF_KSM says of a page's frame; a row written since its merge
        maps its own copy). For diagnostics: the live page-truth join
        (:mod:`planner.testing.live.pages`)."""
        return np.fromiter(
            (e != ZERO and e in self.ent_node for e in self.phys), bool, len(self.phys)
        )

    def processes(self) -> dict[str, dict[str, int]]:
        """ksm_stat of every live process now."""
        if self.snap is None:
            return {}
        out: dict[str, dict[str, int]] = {}
        for mm in self.snap.mm_present.tolist():
            key = str(self.inp.mms[mm].pid)
            out[key] = process_counters(
                rmap_items=self.mm_rmap[mm],
                merging=self.mm_merging[mm],
                zero=self.mm_zero[mm],
                page_size=self.page_size,
            )
        return out

    def node_members(self) -> list[tuple[int, int, int]]:
        """``(node, mm, items)`` for every KSM page with items; nodes numbered by content,
        then by their lowest (mm, page) item."""
        nodes: list[_Node] = []
        for slot in self.stable.values():
            nodes.extend(slot.dups if isinstance(slot, _Chain) else [slot])
        live = [n for n in nodes if n.items]
        live.sort(key=lambda n: (n.key, min((it.mm, it.page) for it in n.items)))
        out: list[tuple[int, int, int]] = []
        for i, node in enumerate(live):
            per_mm = Counter(it.mm for it in node.items)
            out.extend((i, mm, n) for mm, n in sorted(per_mm.items()))
        return out

    def stable_tree(self) -> dict[int, list[tuple[tuple[int, int], ...]]]:
        """Content hash -> its stable nodes (a chain's dups head first), each as the sorted
        (mm, page) of its items: the whole stable tree, for tests and debugging."""
        out: dict[int, list[tuple[tuple[int, int], ...]]] = {}
        for key, slot in self.stable.items():
            nodes = slot.dups if isinstance(slot, _Chain) else [slot]
            out[key] = [tuple(sorted((it.mm, it.page) for it in n.items)) for n in nodes]
        return out

    # ------------------------------------------------------------------ the ksmd loop

    def has_work(self) -> bool:
        """Whether an mm is registered or a full scan is in progress."""
        return bool(self.slots) or self.cursor is not None

    def in_scan(self) -> bool:
        """Whether a full scan is in progress."""
        return self.cursor is not None

    def start_scan(self, now_ns: int) -> None:
        """scan_get_next_rmap_item at the list head: empty the unstable tree, start a scan."""
        self.now_ns = now_ns
        self.scan_start_ns = now_ns
        self.unstable.clear()
        self.scan_inserts = 0
        self.cursor = self.slots[0]
        self.cursor_page = 0

    def _batch(self, budget: int) -> Counter[str]:
        """One ksm_do_scan(pages_to_scan): the visits of each path."""
        self._batch_paths = Counter()
        self._batch_levels = Counter()
        self._scan_ended = False
        while budget > 0:
            nxt = self._next_item()
            if nxt is None:
                break
            self._cmp_and_merge(*nxt)
            budget -= 1
        return self._batch_paths

    def run(self, plan: BatchPlan) -> BatchRun:
        """Batches from ``plan.t0_ns`` until the full scan ends or the boundary comes."""
        times: list[int] = []
        cpus: list[int] = []
        rows: list[npt.NDArray[np.int64]] = []
        paths = np.zeros(len(PATHS), np.int64)
        levels = np.zeros(len(PATHS), np.int64)
        costs = dict(zip(PATHS, plan.path_costs_ns, strict=True))
        t = plan.t0_ns
        while True:
            self.now_ns = t
            batch = self._batch(plan.pages_to_scan)
            cpu = plan.batch_overhead_ns + (plan.scan_start_ns if not times else 0)
            for p, n in batch.items():
                paths[PATHS.index(p)] += n
                cpu += n * costs[p]
            for p, n in self._batch_levels.items():
                levels[PATHS.index(p)] += n
                cpu += n * plan.level_ns
            times.append(t)
            cpus.append(cpu)
            rows.append(self.state_row())
            t = next_batch_ns(t, cpu, plan.sleep_ns, plan.tick_ns)
            if self._scan_ended or t >= plan.boundary_ns:
                break
        run = BatchRun(
            times_ns=np.array(times, np.int64),
            cpu_ns=np.array(cpus, np.int64),
            rows=np.array(rows, np.int64).reshape(-1, N_ROW),
            paths=[paths],
            levels=[levels],
        )
        if self._scan_ended:
            run.scan_end_batches.append(len(times) - 1)
            run.processes.append(self.processes())
        return run

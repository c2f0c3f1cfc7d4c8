"""From a policy set to the engine's resolver, and which process each rule selected.

:class:`SetResolver` is what :func:`planner.engine.prepare` calls once per process instance
(mm), parents before children. It applies the rules of a :class:`~planner.policy.model.PolicySet`
(first match wins), then the kernel's inheritance of ``prctl``:

* **fork** -- a child of a ``prctl`` process is ``prctl`` too (``MMF_VM_MERGE_ANY`` is
  inherited), unless its first matching rule says ``off`` (the child switches KSM off with
  ``prctl(PR_SET_MEMORY_MERGE, 0)``). The policy is taken to be in force from the start, so
  this also holds for children forked before the trace began. Its security domain is its
  matching rule's, else the set's ``default_domain`` (evaluated on the child), else its
  parent's;
* **exec** -- a process that exec'd (a new mm with the same pid and start time) keeps
  ``prctl`` (kept over execve since 6.7), but loses ``madvise`` (new VMAs): its new image
  is matched against the rules again.

See docs/kernel-semantics.md §2.2-§2.4. :func:`match_processes` runs the resolver over
a trace's process table only (no pages), to show which rule selected which process and to
find rules that select nothing.
"""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from planner.engine.registration import ProcessInfo, Registration
from planner.errors import PolicyError
from planner.trace import schema as S

if TYPE_CHECKING:
    from planner.policy.model import Match, PolicySet, Seed, _Selector
    from planner.trace.io import HostTrace, Trace

#: The domain of registered processes whose rule names none (for grouping; never shown as a
#: domain a user chose).
NO_DOMAIN = "(none)"


def domain_key(reg: Registration) -> str:
    """The security domain of a registration, :data:`NO_DOMAIN` when it has none."""
    return reg.domain if reg.domain is not None else NO_DOMAIN


@dataclass(frozen=True)
class Decision:
    """How one process instance was registered, and why."""

    mm: int
    pid: int
    comm: str | None
    mode: str
    kinds: tuple[str, ...]
    domain: str | None
    rule: str
    reason: str  # "rule" | "default" | "inherited" | "exec" | "only_domain"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        return d


@dataclass
class _Compiled:
    """A selector with its regular expressions compiled."""

    sel: _Selector
    comm: re.Pattern[str] | None
    cmdline: re.Pattern[str] | None

    @classmethod
    def of(cls, sel: _Selector) -> _Compiled:
        return cls(
            sel,
            re.compile(sel.comm) if sel.comm is not None else None,
            re.compile(sel.cmdline) if sel.cmdline is not None else None,
        )

    def matches(self, info: ProcessInfo) -> bool:
        s = self.sel
        if self.comm is not None and (info.comm is None or not self.comm.fullmatch(info.comm)):
            return False
        if self.cmdline is not None and (
            info.cmdline is None or not self.cmdline.search(info.cmdline)
        ):
            return False
        if not s.glob_cgroup(info.cgroup):
            return False
        if s.uid is not None and info.uid not in s.uid:
            return False
        if s.pid is not None and info.pid not in s.pid:
            return False
        if s.root is not None and (info.parent_mm is None) != s.root:
            return False
        if s.labels is not None:
            import fnmatch

            for key, pattern in s.labels.items():
                value = info.labels.get(key)
                if value is None or not fnmatch.fnmatchcase(value, pattern):
                    return False
        return True


def _format_domain(template: str, info: ProcessInfo) -> str:
    out: list[str] = []
    for literal, fld, spec, _ in string.Formatter().parse(template):
        out.append(literal)
        if fld is None:
            continue
        value: object
        if fld == "label":
            value = info.labels.get(spec or "")
        else:
            value = getattr(info, fld)
        out.append("none" if value is None or value == "" else str(value))
    return "".join(out)


class SetResolver:
    """The engine resolver of a :class:`~planner.policy.model.PolicySet`.

    Call it as ``resolver(info, parent_registration)``; it remembers every decision
    (:attr:`decisions`) and which processes each rule matched (:attr:`matched`).

    Parameters
    ----------
    policy
        The policy set.
    only_domain
        When given, processes of any other domain are ``off`` (the replay of one security
        domain alone). Inheritance and domains are still decided on the whole process tree.
    enforce_cross_domain
        When the set denies merging across domains (``cross_domain = "deny"``) and no
        ``only_domain`` is given, refuse to register processes of a second domain: one
        replay is one host, and mainline KSM merges whatever is registered on a host, so a
        replay of several domains together would merge across them (what ``replay
        --policy-set`` did before). :meth:`__call__` raises
        :class:`~planner.errors.PolicyError` naming both domains and the way out.
    """

    def __init__(
        self,
        policy: PolicySet,
        *,
        only_domain: str | None = None,
        enforce_cross_domain: bool = False,
    ) -> None:
        self.policy = policy
        self.only_domain = only_domain
        self.enforce_cross_domain = (
            enforce_cross_domain
            and policy.cross_domain == "deny"
            and only_domain is None
            and policy.only_domain is None
        )
        self._first_domain: str | None = None
        self._rules = [(r, r.label(i), _Compiled.of(r.match)) for i, r in enumerate(policy.rules)]
        self._seeds: dict[int, _Compiled] = {
            i: _Compiled.of(r.match.descendants_of)
            for i, r in enumerate(policy.rules)
            if r.match.descendants_of
        }
        self._infos: dict[int, ProcessInfo] = {}
        self._regs: dict[int, Registration] = {}
        self._by_process: dict[tuple[int, int], Registration] = {}
        self.decisions: dict[int, Decision] = {}
        self.matched: dict[str, list[int]] = {label: [] for _, label, _ in self._rules}

    # ------------------------------------------------------------------ matching

    def _seed_ok(self, seed: Seed, compiled: _Compiled, info: ProcessInfo) -> bool:
        if seed.include_seed and compiled.matches(info):
            return True
        for a in info.ancestors:
            anc = self._infos.get(a)
            if anc is not None and compiled.matches(anc):
                return True
        return False

    def _rule_matches(
        self, index: int, match: Match, compiled: _Compiled, info: ProcessInfo
    ) -> bool:
        if not compiled.matches(info):
            return False
        if match.descendants_of is not None:
            return self._seed_ok(match.descendants_of, self._seeds[index], info)
        return True

    def first_match(self, info: ProcessInfo) -> int | None:
        """Index of the first rule matching ``info`` (``None`` when none does)."""
        for i, (rule, _, compiled) in enumerate(self._rules):
            if self._rule_matches(i, rule.match, compiled, info):
                return i
        return None

    # ------------------------------------------------------------------ resolving

    def _domain(self, template: str | None, info: ProcessInfo) -> str | None:
        template = template if template is not None else self.policy.default_domain
        return None if template is None else _format_domain(template, info)

    def decide(self, info: ProcessInfo, parent: Registration | None) -> tuple[Registration, str]:
        """The registration of ``info`` on the whole tree (no domain filter) and the reason."""
        del parent  # the engine's parent registration may be domain-filtered: use ours
        idx = self.first_match(info)
        rule = self.policy.rules[idx] if idx is not None else None
        label = self._rules[idx][1] if idx is not None else None
        if label is not None:
            self.matched[label].append(info.pid)
        parent_reg = self._regs.get(info.parent_mm) if info.parent_mm is not None else None
        before = self._by_process.get((info.pid, info.proc_start))
        inherited_from: tuple[Registration, str] | None = None
        if self.policy.inherit:
            if before is not None and before.mode == "prctl":
                inherited_from = (before, "exec")
            elif parent_reg is not None and parent_reg.mode == "prctl":
                inherited_from = (parent_reg, "inherited")
        if inherited_from is not None and (rule is None or rule.action != "off"):
            src, reason = inherited_from
            # the domain: the rule's, else the set's default template, else the parent's
            if rule is not None and rule.domain:
                domain = self._domain(rule.domain, info)
            elif self.policy.default_domain is not None:
                domain = self._domain(None, info)
            else:
                domain = src.domain
            if rule is not None and rule.action == "prctl":
                return Registration(mode="prctl", domain=domain, rule=label), "rule"
            via = "kept over exec" if reason == "exec" else "inherited from parent"
            return Registration(mode="prctl", domain=domain, rule=f"{via} ({src.rule})"), reason
        if rule is None:
            if self.policy.default == "prctl":
                return Registration(
                    mode="prctl", domain=self._domain(None, info), rule="default"
                ), "default"
            return Registration(mode="off", rule="default"), "default"
        if rule.action == "off":
            return Registration(mode="off", rule=label), "rule"
        return (
            Registration(
                mode=rule.action,
                kinds=frozenset(rule.kinds),
                ranges=rule.ranges,
                domain=self._domain(rule.domain, info),
                rule=label,
            ),
            "rule",
        )

    def __call__(self, info: ProcessInfo, parent: Registration | None) -> Registration:
        self._infos[info.mm] = info
        reg, reason = self.decide(info, parent)
        self._regs[info.mm] = reg
        self._by_process[(info.pid, info.proc_start)] = reg
        wanted = self.policy.only_domain
        if wanted is not None and reg.mode != "off" and domain_key(reg) != wanted:
            # KSM for one domain only (part of the policy): inheritance and domains are still
            # decided on the whole tree, above
            reg = Registration(mode="off", domain=reg.domain, rule=f"KSM for domain {wanted} only")
            reason = "only_domain"
        self.decisions[info.mm] = Decision(
            mm=info.mm,
            pid=info.pid,
            comm=info.comm,
            mode=reg.mode,
            kinds=tuple(sorted(reg.kinds)),
            domain=reg.domain if reg.mode != "off" else None,
            rule=reg.rule or "",
            reason=reason,
        )
        if (
            self.only_domain is not None
            and reg.mode != "off"
            and domain_key(reg) != self.only_domain
        ):
            return Registration(
                mode="off", domain=reg.domain, rule=f"other domain ({domain_key(reg)})"
            )
        if self.enforce_cross_domain and reg.mode != "off":
            self._check_one_domain(domain_key(reg))
        return reg

    def _check_one_domain(self, domain: str) -> None:
        """Refuse a second domain in one replay of a set that denies merging across them."""
        if self._first_domain is None:
            self._first_domain = domain
            return
        if domain == self._first_domain:
            return
        name = self.policy.name
        raise PolicyError(
            f'policy set {name!r} keeps security domains apart (cross_domain = "deny") but '
            f"registers processes of domains {self._first_domain!r} and {domain!r} on one "
            "host; mainline KSM has no per-domain merge boundary, so one replay would merge "
            "across them",
            hint=f"replay one domain (KSM for it only): --policy-set '{name}@{self._first_domain}'"
            f"; or compare the placements with 'ksm-planner whatif' (domains on separate "
            f'hosts); or set cross_domain = "allow" if merging across them is acceptable',
        )

    # ------------------------------------------------------------------ reports

    def domains(self) -> list[str]:
        """Domains of the registered processes seen so far (sorted)."""
        return sorted(
            {
                d.domain if d.domain is not None else NO_DOMAIN
                for d in self.decisions.values()
                if d.mode != "off"
            }
        )

    def unmatched_rules(self) -> list[str]:
        """Labels of the rules that matched no process (optional rules excluded)."""
        return [
            label
            for (rule, label, _) in self._rules
            if not self.matched[label] and not rule.optional and not self.policy.preset
        ]


@dataclass(frozen=True)
class MatchReport:
    """Which processes of one host a policy set registers, and how."""

    policy_set: str
    host: str
    decisions: tuple[Decision, ...]
    matched: dict[str, tuple[int, ...]] = field(default_factory=dict)  # rule label -> pids
    unmatched_rules: tuple[str, ...] = ()

    @property
    def registered(self) -> int:
        """Process instances KSM is enabled for."""
        return sum(1 for d in self.decisions if d.mode != "off")

    @property
    def domains(self) -> tuple[str, ...]:
        """Security domains of the registered processes (sorted)."""
        return tuple(
            sorted(
                {
                    d.domain if d.domain is not None else NO_DOMAIN
                    for d in self.decisions
                    if d.mode != "off"
                }
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "policy_set": self.policy_set,
            "host": self.host,
            "registered": self.registered,
            "domains": list(self.domains),
            "decisions": [d.to_dict() for d in self.decisions],
            "matched": {k: list(v) for k, v in self.matched.items()},
            "unmatched_rules": list(self.unmatched_rules),
        }


def _process_only(ht: HostTrace) -> HostTrace:
    from planner.trace.io import HostTrace

    return HostTrace(
        host=ht.host,
        snapshots=ht.snapshots,
        processes=ht.processes,
        mappings=S.MAPPINGS_SCHEMA.empty_table(),
        pages=S.PAGES_SCHEMA.empty_table(),
        trace_hash=ht.trace_hash,
        path=ht.path,
    )


def host_processes(trace: Trace, host: str) -> HostTrace:
    """A :class:`HostTrace` of ``host`` with its snapshots and processes only (cheap to load)."""
    from planner.trace.io import HostTrace

    return HostTrace(
        host=host,
        snapshots=trace.read_table(host, "snapshots"),
        processes=trace.read_table(host, "processes"),
        mappings=S.MAPPINGS_SCHEMA.empty_table(),
        pages=S.PAGES_SCHEMA.empty_table(),
        trace_hash=trace.trace_hash,
        path=trace.host_path(host),
    )


def match_processes(ht: HostTrace, policy: PolicySet) -> MatchReport:
    """Run ``policy`` over the processes of one host (pages are not read).

    Parameters
    ----------
    ht
        A host trace; only its ``snapshots`` and ``processes`` tables are used
        (see :func:`host_processes` to load just those).
    policy
        The policy set.

    Returns
    -------
    MatchReport
        One decision per process instance, the pids each rule matched, the rules that
        matched nothing.
    """
    from planner.engine.prepare import prepare

    resolver = SetResolver(policy)
    stub = _process_only(ht) if ht.pages.num_rows or ht.mappings.num_rows else ht
    prepare(stub, resolver=resolver)
    return MatchReport(
        policy_set=policy.name,
        host=ht.host,
        decisions=tuple(resolver.decisions[m] for m in sorted(resolver.decisions)),
        matched={k: tuple(v) for k, v in resolver.matched.items()},
        unmatched_rules=tuple(resolver.unmatched_rules()),
    )


def check_matches(reports: list[MatchReport], policy: PolicySet) -> list[str]:
    """Raise if a rule of ``policy`` matches no process on any host; return warnings.

    A user-defined rule that selects nothing is almost always a typo, so it is an error
    (mark it ``optional = true`` to allow it). A set whose rules register no process at
    all is an error too, unless every rule and the default say ``off``. Built-in presets
    only warn, since they are written for no particular trace.

    Raises
    ------
    PolicyError
        A rule, or the whole set, selects nothing.
    """
    warnings: list[str] = []
    unmatched = set.intersection(*(set(r.unmatched_rules) for r in reports)) if reports else set()
    if unmatched:
        first = next(r.label(i) for i, r in enumerate(policy.rules) if r.label(i) in unmatched)
        rule = next(r for i, r in enumerate(policy.rules) if r.label(i) == first)
        hosts = ", ".join(r.host for r in reports)
        raise PolicyError(
            f"policy set {policy.name!r}: rule {first!r} ({rule.match.describe()}) "
            f"matches no process of the trace (hosts: {hosts})",
            hint="fix its match conditions, or mark it optional = true",
        )
    wants_ksm = policy.default != "off" or any(r.action != "off" for r in policy.rules)
    if policy.only_domain is not None and reports and all(r.registered == 0 for r in reports):
        raise PolicyError(
            f"policy set {policy.name!r}: domain {policy.only_domain!r} holds no process the "
            "set enables KSM for",
            hint="name a domain the set's rules assign (NAME@DOMAIN), or give the set alone "
            "for every domain",
        )
    if wants_ksm and reports and all(r.registered == 0 for r in reports):
        if policy.preset:
            warnings.append(f"preset {policy.name!r} enables KSM for no process of this trace")
        else:
            raise PolicyError(
                f"policy set {policy.name!r} enables KSM for no process of the trace",
                hint="check its rules against 'ksm-planner info TRACE' (comm, cgroup, uid, labels)",
            )
    return warnings


__all__ = [
    "NO_DOMAIN",
    "Decision",
    "MatchReport",
    "SetResolver",
    "check_matches",
    "domain_key",
    "host_processes",
    "match_processes",
]

"""Policy sets: which processes use KSM, how, and in which security domain.

A *policy set* is an ordered list of *rules*. Each process of a trace is given to the rules
in order; the **first rule that matches wins** and decides the process's action:

* ``prctl`` -- ``prctl(PR_SET_MEMORY_MERGE, 1)``: every compatible mapping of the process,
  now and later, is mergeable, and children forked later inherit it (kernel semantics,
  docs/kernel-semantics.md §2.2-§2.3);
* ``madvise`` -- ``madvise(MADV_MERGEABLE)`` on the mappings of some kinds (``heap``,
  ``anon``, ``stack``, ``file_data``, ...; :data:`planner.trace.schema.VMA_KINDS`) and/or
  address ranges; not inherited over exec;
* ``off`` -- KSM is not used (and, for the child of a ``prctl`` process, switched off with
  ``prctl(PR_SET_MEMORY_MERGE, 0)``).

A process that no rule matches gets the set's ``default`` action (``off`` unless said
otherwise), except that the child of a ``prctl`` process inherits ``prctl`` when
``inherit = true`` (the default, as the kernel does on fork).

Every rule may name a *security domain* (a fixed name or a template such as
``"{label:tenant}"``, ``"{uid}"`` or ``"{cgroup}"``). A what-if scenario either allows
merging across domains or denies it; denying replays each domain as if it ran on a
separate host.

The models are pydantic v2 models (``extra="forbid"``: an unknown key is an error); they
are loaded from TOML by :func:`planner.policy.load_policy`. The file format is described in
``docs/policies.md``.
"""

from __future__ import annotations

import fnmatch
import re
import string
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from planner.trace.schema import VMA_KINDS

if TYPE_CHECKING:
    from planner.policy.resolve import SetResolver

Action = Literal["prctl", "madvise", "off"]
CrossDomain = Literal["allow", "deny"]

#: Placeholders a domain template may use, e.g. ``"tenant-{label:tenant}"``.
DOMAIN_FIELDS = ("comm", "uid", "cgroup", "pid", "label")

_NAME_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: ``NAME@DOMAIN``: the set NAME with KSM for one of its security domains only.
_ONE_DOMAIN_RX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.+-]*)@(\S.*)$")


def _check_regex(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


def _as_int_tuple(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    out: list[int] = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer or a list of integers, got {v!r}")
        out.append(v)
    if not out:
        raise ValueError("the list is empty")
    return tuple(out)


def _parse_address(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(f"expected an address, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            raise ValueError(
                f"{v!r} is not an address (use an integer or a hex string like '0x7f0000000000')"
            ) from None
    raise ValueError(f"expected an address, got {v!r}")


def check_domain_template(template: str) -> str:
    """Validate a domain name or template; return it unchanged.

    Raises
    ------
    ValueError
        Unknown placeholder, bad format string or an empty name.

    Examples
    --------
    >>> check_domain_template("tenant-{label:tenant}")
    'tenant-{label:tenant}'
    """
    if not template.strip():
        raise ValueError("a domain name cannot be empty")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad domain template {template!r}: {exc}") from None
    for _, field, spec, conv in parts:
        if field is None:
            continue
        if conv or (spec and field != "label"):
            raise ValueError(f"bad placeholder in domain template {template!r}")
        if field == "label":
            if not spec:
                raise ValueError(f"domain template {template!r}: use {{label:KEY}} to name a label")
            continue
        if field not in DOMAIN_FIELDS:
            names = ", ".join("{" + f + "}" for f in DOMAIN_FIELDS[:-1])
            raise ValueError(
                f"unknown placeholder {{{field}}} in domain template {template!r} "
                f"(use one of {names}, {{label:KEY}})"
            )
    return template


class _Selector(BaseModel):
    """Conditions on one process; every condition given must hold (logical AND)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    comm: str | None = Field(
        default=None, description="Regular expression the whole comm must match."
    )
    cmdline: str | None = Field(
        default=None, description="Regular expression searched in the command line."
    )
    cgroup: str | None = Field(
        default=None, description="Glob on the cgroup v2 path ('*' also crosses '/')."
    )
    uid: tuple[int, ...] | None = Field(default=None, description="User id(s).")
    pid: tuple[int, ...] | None = Field(default=None, description="Process id(s) in the trace.")
    labels: dict[str, str] | None = Field(
        default=None, description="Trace labels; values are globs."
    )
    root: bool | None = Field(
        default=None,
        description="true: the process's parent is not in the trace (a master, a seed); "
        "false: its parent is in the trace (a forked worker).",
    )

    @field_validator("comm", "cmdline")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return _check_regex(v)

    @field_validator("uid", "pid", mode="before")
    @classmethod
    def _ints(cls, v: Any) -> tuple[int, ...] | None:
        return _as_int_tuple(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and not v:
            raise ValueError("labels is empty")
        return v

    def is_empty(self) -> bool:
        """Whether no condition is given (matches every process)."""
        return all(getattr(self, name) is None for name in type(self).model_fields)

    def describe(self) -> str:
        """A short text of the conditions, e.g. ``comm=python root=false``."""
        parts = []
        for name in type(self).model_fields:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, Seed):
                parts.append(f"descendants_of({v.describe()})")
            elif isinstance(v, tuple):
                parts.append(f"{name}={','.join(map(str, v))}")
            elif isinstance(v, dict):
                parts.append(" ".join(f"label:{k}={val}" for k, val in v.items()))
            elif isinstance(v, bool):
                parts.append(f"{name}={'true' if v else 'false'}")
            else:
                parts.append(f"{name}={v}")
        return " ".join(parts) if parts else "every process"

    def glob_cgroup(self, cgroup: str | None) -> bool:
        """Whether ``cgroup`` matches this selector's glob (``True`` when there is none)."""
        if self.cgroup is None:
            return True
        return cgroup is not None and fnmatch.fnmatchcase(cgroup, self.cgroup)


class Seed(_Selector):
    """The seed process of a ``descendants_of`` condition."""

    include_seed: bool = Field(default=True, description="Whether the seed itself matches too.")


class Match(_Selector):
    """The conditions of a rule. An empty match selects every process."""

    descendants_of: Seed | None = Field(
        default=None,
        description="The process descends from a process matching these conditions (the per-cgroup "
        "use of prctl: enable it on the seed, its children inherit).",
    )


class Rule(BaseModel):
    """One rule of a policy set: a match, an action, and optionally a security domain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="Shown in results; defaults to 'rule N'.")
    match: Match = Field(default_factory=Match)
    action: Action
    kinds: tuple[str, ...] = Field(default=(), description="madvise: mapping kinds made mergeable.")
    ranges: tuple[tuple[int, int], ...] = Field(
        default=(), description="madvise: [start, end) address ranges made mergeable."
    )
    domain: str | None = Field(default=None, description="Security domain (a name or a template).")
    optional: bool = Field(default=False, description="Matching no process is not an error.")

    @field_validator("kinds", mode="before")
    @classmethod
    def _kinds(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        for k in v:
            if k not in VMA_KINDS:
                raise ValueError(f"unknown mapping kind {k!r} (kinds are: {', '.join(VMA_KINDS)})")
        return tuple(dict.fromkeys(v))

    @field_validator("ranges", mode="before")
    @classmethod
    def _ranges(cls, v: Any) -> Any:
        out = []
        for item in v:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise ValueError(f"a range is [start, end], got {item!r}")
            start, end = _parse_address(item[0]), _parse_address(item[1])
            if not 0 <= start < end:
                raise ValueError(
                    f"range [{item[0]}, {item[1]}] is empty or negative (start must be below end)"
                )
            out.append((start, end))
        return tuple(out)

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        return None if v is None else check_domain_template(v)

    @model_validator(mode="after")
    def _action_fields(self) -> Rule:
        if self.action == "madvise" and not self.kinds and not self.ranges:
            raise ValueError('a madvise rule needs kinds (e.g. kinds = ["heap"]) or ranges')
        if self.action != "madvise" and (self.kinds or self.ranges):
            raise ValueError(f"kinds and ranges only apply to madvise rules, not to {self.action}")
        return self

    def label(self, index: int) -> str:
        """The rule's name, or ``rule N`` (1-based) when it has none."""
        return self.name or f"rule {index + 1}"


class PolicySet(BaseModel):
    """A named, ordered list of rules (first match wins) with a default action."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    rules: tuple[Rule, ...] = ()
    default: Literal["off", "prctl"] = Field(
        default="off", description="Action when no rule matches."
    )
    default_domain: str | None = Field(
        default=None, description="Domain of processes whose rule (or the default) names none."
    )
    inherit: bool = Field(
        default=True, description="Children of a prctl process inherit prctl (kernel semantics)."
    )
    cross_domain: CrossDomain = Field(
        default="deny",
        description="Whether scenarios of this set may merge across domains by default.",
    )
    only_domain: str | None = Field(
        default=None,
        description="KSM for this security domain only: processes of every other domain "
        "are off (the deployable form of keeping domains apart on one host).",
    )
    preset: bool = Field(
        default=False, description="A built-in preset (its rules may match nothing)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        m = _ONE_DOMAIN_RX.match(v)
        if not _NAME_RX.match(m.group(1) if m else v):
            raise ValueError(
                f"set name {v!r} must start with a letter or digit "
                "and use only letters, digits and _.+-"
            )
        return v

    @field_validator("only_domain")
    @classmethod
    def _only_domain(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("only_domain must name a domain")
        return v

    def for_domain(self, domain: str) -> PolicySet:
        """This set with KSM for ``domain`` only, named ``NAME@DOMAIN``.

        Mainline KSM has no per-domain merge boundary: on one host, the only way to keep two
        security domains from merging is to enable KSM for one of them only.
        """
        if not domain.strip():
            raise ValueError("name a domain after @")
        return self.model_copy(update={"name": f"{self.name}@{domain}", "only_domain": domain})

    @staticmethod
    def split_name(text: str) -> tuple[str, str | None]:
        """``("NAME", "DOMAIN")`` of ``NAME@DOMAIN``, ``("NAME", None)`` of a plain name.

        Examples
        --------
        >>> PolicySet.split_name("web@tenant-a"), PolicySet.split_name("web")
        (('web', 'tenant-a'), ('web', None))
        """
        m = _ONE_DOMAIN_RX.match(text)
        return (m.group(1), m.group(2)) if m else (text, None)

    @field_validator("default_domain")
    @classmethod
    def _default_domain(cls, v: str | None) -> str | None:
        return None if v is None else check_domain_template(v)

    @model_validator(mode="after")
    def _unique_rule_names(self) -> PolicySet:
        seen: set[str] = set()
        for i, r in enumerate(self.rules):
            label = r.label(i)
            if label in seen:
                raise ValueError(f"two rules are named {label!r}")
            seen.add(label)
        return self

    def resolver(
        self, *, only_domain: str | None = None, enforce_cross_domain: bool = True
    ) -> SetResolver:
        """The engine resolver of this set: ``resolver(info, parent_registration) -> Registration``.

        Parameters
        ----------
        only_domain
            Register only the processes of this domain (every other process is ``off``):
            the replay of one domain "as if on a separate host" (how the what-if replays a
            set that denies merging across domains). A set's own ``only_domain`` applies
            in any case, as part of the policy.
        enforce_cross_domain
            Honour the set's ``cross_domain = "deny"`` in this one replay: a replay of one
            host cannot keep domains apart (mainline KSM has no per-domain boundary), so the
            resolver refuses to register a second domain (:class:`~planner.errors.PolicyError`
            naming the domains and ``NAME@DOMAIN``). The what-if, which replays each domain
            alone itself, turns this off.
        """
        from planner.policy.resolve import SetResolver

        return SetResolver(
            self,
            only_domain=only_domain,
            enforce_cross_domain=enforce_cross_domain,
        )

    def summary(self) -> str:
        """One line per rule, for people."""
        lines = [f"{self.name}: {self.description}".rstrip(": ")]
        for i, r in enumerate(self.rules):
            extra = ""
            if r.kinds:
                extra += f" kinds={','.join(r.kinds)}"
            if r.ranges:
                extra += " ranges=" + ",".join(f"{a:#x}-{b:#x}" for a, b in r.ranges)
            dom = f" domain={r.domain}" if r.domain else ""
            lines.append(f"  {r.label(i)}: {r.match.describe()} -> {r.action}{extra}{dom}")
        lines.append(
            f"  otherwise: {self.default}"
            + (" (children of prctl processes inherit prctl)" if self.inherit else "")
        )
        return "\n".join(lines)


class PolicyFile(BaseModel):
    """The content of a policy TOML file: named sets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[int, Field(ge=1, le=1)] = 1
    sets: dict[str, dict[str, Any]]

    @field_validator("sets")
    @classmethod
    def _non_empty(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not v:
            raise ValueError("the file defines no policy set (add a [sets.NAME] table)")
        return v


__all__ = [
    "DOMAIN_FIELDS",
    "Action",
    "CrossDomain",
    "Match",
    "PolicyFile",
    "PolicySet",
    "Rule",
    "Seed",
    "check_domain_template",
]

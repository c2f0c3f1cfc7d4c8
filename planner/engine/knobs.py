"""The ksmd knobs a replay runs under: the one table every other place is derived from.

Each knob is declared once, as a field of :class:`KsmKnobs` whose metadata is its
:class:`KnobSpec`: type and default (the kernel's), unit, ``/sys/kernel/mm/ksm`` file, CLI
flag, help, display rank and valid values. :data:`KNOBS` lists the specs in declaration order.
Everything else reads that table: validation (:meth:`KsmKnobs.__post_init__`), grid parsing,
aliases and display order (:mod:`planner.whatif.grid`), the sysfs translation and the lease's
kernel defaults (:mod:`planner.kernel.run`, :mod:`planner.kernel.sysfs`), the knob options of
every command (:mod:`planner.cli._args`), the review's knob order and the test strategies.
Adding a knob means adding a field here and teaching the two engines what it does.

Names follow ``/sys/kernel/mm/ksm``, with the unit in the name where the kernel's lacks it
(``sleep_millisecs`` is ``sleep_ms`` here; the kernel spelling is accepted wherever a knob is
named). See docs/kernel-semantics.md §9.3 for the defaults and §4-§8 for what each knob does.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from planner.errors import KnobError

if TYPE_CHECKING:
    from collections.abc import Mapping

Advisor = Literal["none", "scan-time"]
KnobValue = bool | int | float | str

#: The CONFIG_HZ values a kernel can be built with (kernel/Kconfig.hz).
HZ_VALUES: Final = (100, 250, 300, 1000)
#: The HZ assumed when neither the trace nor the user says (the most common distribution build).
DEFAULT_HZ: Final = 250
#: Words accepted for on/off knobs (case-insensitive).
TRUE_WORDS: Final = frozenset({"on", "true", "yes", "1"})
FALSE_WORDS: Final = frozenset({"off", "false", "no", "0"})
_U32_MAX: Final = 0xFFFFFFFF
_INT_MAX: Final = 0x7FFFFFFF


@dataclass(frozen=True)
class KnobSpec:
    """Everything the project knows about one ksmd knob (one row of the knob table).

    Attributes
    ----------
    name
        The field of :class:`KsmKnobs` (snake case, unit suffix where the kernel has none).
    kind
        ``bool``, ``int``, ``float`` or ``str``.
    default
        The kernel's default (Linux 6.18), or the model's assumption for model-only knobs.
    unit
        ``pages``, ``ms``, ``s``, ``%``, ``Hz`` or ``""``.
    sysfs
        The file of ``/sys/kernel/mm/ksm``; ``None`` when the kernel has no such file
        (``hz`` is CONFIG_HZ, ``advisor_initial_cpu_s`` a fact about the host's past).
    help
        One line for ``--help`` and the documentation.
    rank
        Display order (lower first) in tables, scenario labels and the review.
    choices
        The only valid values, or ``None``.
    minimum, maximum
        Bounds of a numeric knob (inclusive), or ``None``.
    needs_empty
        The kernel refuses to change it while KSM pages exist (``EBUSY`` unless
        ``pages_shared`` is 0): it is written right after ``run=2``.
    flag
        The command-line option (``--pages-to-scan``).
    samples
        Values the property tests draw for a numeric knob (its edges and a typical value);
        on/off knobs draw both, knobs with :attr:`choices` every choice, the others their
        default (:attr:`test_values`).
    """

    name: str
    kind: type
    default: KnobValue
    unit: str
    sysfs: str | None
    help: str
    rank: int
    choices: tuple[KnobValue, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    needs_empty: bool = False
    flag: str = ""
    samples: tuple[KnobValue, ...] = ()

    @property
    def test_values(self) -> tuple[KnobValue, ...]:
        """The values property tests draw (see :attr:`samples`)."""
        if self.samples:
            return self.samples
        if self.kind is bool:
            return (False, True)
        return self.choices if self.choices is not None else (self.default,)

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other names accepted for this knob (the kernel's spelling where it differs)."""
        return (self.sysfs,) if self.sysfs is not None and self.sysfs != self.name else ()

    def parse(self, value: Any) -> KnobValue:
        """Convert one value (command-line text or a TOML value) to the knob's type.

        Only the type is checked here; :meth:`check` checks the value.

        Raises
        ------
        KnobError
            The value is not of the knob's type.

        Examples
        --------
        >>> spec("smart_scan").parse("off"), spec("pages_to_scan").parse("4000")
        (False, 4000)
        """
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in TRUE_WORDS or text in FALSE_WORDS:
                return text in TRUE_WORDS
            raise KnobError(
                f"{self.name}: {value!r} is not on/off", hint="use on, off, true or false"
            )
        if self.kind is str:
            if not isinstance(value, str):
                raise KnobError(f"{self.name}: {value!r} is not a name", hint=self._choices_hint())
            return value.strip()
        if isinstance(value, bool):
            what = "an integer" if self.kind is int else "a number"
            raise KnobError(f"{self.name}: {value!r} is not {what}", hint=self._number_hint())
        if self.kind is float:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise KnobError(
                    f"{self.name}: {value!r} is not a number", hint=self._number_hint()
                ) from None
        if isinstance(value, float):
            raise KnobError(f"{self.name}: {value!r} is not an integer", hint="give a whole number")
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip(), 0)
        except ValueError:
            raise KnobError(
                f"{self.name}: {value!r} is not an integer", hint="give a whole number"
            ) from None

    def check(self, value: Any) -> KnobValue:
        """``value`` as the knob's plain Python type, if it is valid.

        Raises
        ------
        KnobError
            The value has another type, is not one of :attr:`choices` or is out of bounds.
        """
        plain = _as_kind(value, self.kind)
        problem = (
            (f"{self.name} must be {_KIND_WORDS[self.kind]}, not {value!r}", self._hint())
            if plain is None
            else self._problem(plain)
        )
        if problem is not None:
            raise KnobError(problem[0], hint=problem[1])
        return plain  # type: ignore[no-any-return]

    def _problem(self, value: Any) -> tuple[str, str] | None:
        if self.choices is not None and value not in self.choices:
            if self.name == "hz":
                return f"hz {value} is not a kernel CONFIG_HZ", self._choices_hint()
            return f"unknown {self.name} {value!r}", self._choices_hint()
        if self.minimum is not None and value < self.minimum:
            if self.minimum == 0:
                return f"{self.name} cannot be negative", f"use 0 or more{self._unit_words()}"
            return f"{self.name} must be at least {_num(self.minimum)}", self._number_hint()
        if self.maximum is not None and value > self.maximum:
            if self.maximum == _U32_MAX:
                return f"{self.name} must fit 32 bits", f"use at most {_num(self.maximum)}"
            return f"{self.name} must be at most {_num(self.maximum)}", self._number_hint()
        return None

    def to_sysfs(self, value: KnobValue) -> int | str:
        """The text value the kernel's file takes (on/off knobs are 0/1)."""
        if self.kind is str:
            return str(value)
        return int(value)

    def from_sysfs(self, value: int | str) -> KnobValue:
        """The knob's value from the text of its sysfs file (``[none] scan-time`` -> ``none``)."""
        if isinstance(value, str) and "[" in value and "]" in value:
            value = value[value.index("[") + 1 : value.index("]")]
        return self.check(self.parse(value))

    def describe(self) -> str:
        """The help line with the unit and the default, e.g. for ``--help``."""
        return f"{self.help} Default: {self.show(self.default)}{self._unit_words()}."

    def show(self, value: KnobValue) -> str:
        """A value as a user writes it (on/off for booleans)."""
        if isinstance(value, bool):
            return "on" if value else "off"
        return _num(value) if isinstance(value, float) else str(value)

    def _unit_words(self) -> str:
        return f" {self.unit}" if self.unit and self.unit != "%" else self.unit

    def _choices_hint(self) -> str:
        if not self.choices:
            return "give a name"
        words = [self.show(c) for c in self.choices]
        return "use " + (", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0])

    def _number_hint(self) -> str:
        lo = _num(self.minimum) if self.minimum is not None else None
        hi = _num(self.maximum) if self.maximum is not None else None
        if lo is not None and hi is not None:
            return f"use {lo}..{hi}{self._unit_words()}"
        if lo is not None:
            return f"use {lo} or more{self._unit_words()}"
        return "give a number"

    def _hint(self) -> str:
        if self.kind is bool:
            return "use on or off"
        return self._choices_hint() if self.choices else self._number_hint()


_KIND_WORDS: Final = {bool: "on or off", int: "an integer", float: "a number", str: "a name"}


def _as_kind(value: Any, kind: type) -> Any:
    """``value`` as a plain ``kind`` (numpy scalars, 0/1 for on/off); ``None``: not one."""
    if kind is str:
        return value if isinstance(value, str) else None
    if kind is bool:
        if isinstance(value, bool | np.bool_):
            return bool(value)
        return bool(value) if isinstance(value, numbers.Integral) and value in (0, 1) else None
    if isinstance(value, bool | np.bool_):
        return None
    if kind is int:
        return int(value) if isinstance(value, numbers.Integral) else None
    return float(value) if isinstance(value, numbers.Real) else None


def _num(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"


def _knob(
    default: KnobValue,
    *,
    unit: str,
    sysfs: str | None,
    help: str,
    rank: int,
    choices: tuple[KnobValue, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    needs_empty: bool = False,
    flag: str = "",
    samples: tuple[KnobValue, ...] = (),
) -> Any:
    """A :class:`KsmKnobs` field carrying its :class:`KnobSpec` (completed by :data:`KNOBS`)."""
    meta = {
        "unit": unit,
        "sysfs": sysfs,
        "help": help,
        "rank": rank,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "needs_empty": needs_empty,
        "flag": flag,
        "samples": samples,
    }
    return field(default=default, metadata={"knob": meta})


@dataclass(frozen=True)
class KsmKnobs:
    """ksmd settings: the knob table. Defaults are the kernel's (Linux 6.18).

    Every field is one knob; its :class:`KnobSpec` (in the field's metadata, listed in
    :data:`KNOBS`) says how it is named, shown, written to sysfs and checked.
    """

    pages_to_scan: int = _knob(
        100,
        unit="pages",
        sysfs="pages_to_scan",
        help="Pages ksmd scans per batch (between two sleeps).",
        rank=1,
        minimum=1,
        maximum=_U32_MAX,
        samples=(1, 2, 3, 7, 20, 1000),
    )
    sleep_ms: int = _knob(
        20,
        unit="ms",
        sysfs="sleep_millisecs",
        help="ksmd's sleep between batches.",
        rank=2,
        minimum=0,
        maximum=_U32_MAX,
        samples=(0, 1, 20, 100),
    )
    hz: int = _knob(
        DEFAULT_HZ,
        unit="Hz",
        sysfs=None,
        help="The kernel's CONFIG_HZ (ksmd sleeps whole jiffies).",
        rank=13,
        choices=HZ_VALUES,
    )
    max_page_sharing: int = _knob(
        256,
        unit="",
        sysfs="max_page_sharing",
        help="Most mappers of one KSM page (longer chains get a duplicate page).",
        rank=5,
        minimum=2,
        maximum=_INT_MAX,
        needs_empty=True,
        samples=(2, 3, 4, 256),
    )
    use_zero_pages: bool = _knob(
        False,
        unit="",
        sysfs="use_zero_pages",
        help="Map zero-filled pages to the kernel's zero page instead of merging them.",
        rank=6,
    )
    smart_scan: bool = _knob(
        True,
        unit="",
        sysfs="smart_scan",
        help="Skip pages that keep failing to merge, for a growing number of scans.",
        rank=3,
    )
    advisor: Advisor = _knob(  # noqa: RUF009  (_knob returns a dataclasses.field)
        "none",
        unit="",
        sysfs="advisor_mode",
        help="The scan-time advisor, which sets pages_to_scan from the time a scan takes.",
        rank=4,
        choices=("none", "scan-time"),
    )
    advisor_max_cpu: int = _knob(
        70,
        unit="%",
        sysfs="advisor_max_cpu",
        help="Most CPU the advisor lets ksmd use, % of one core.",
        rank=7,
        minimum=1,
        maximum=100,
    )
    advisor_min_pages_to_scan: int = _knob(
        500,
        unit="pages",
        sysfs="advisor_min_pages_to_scan",
        help="The advisor's smallest pages_to_scan (and its starting value).",
        rank=9,
        minimum=1,
        maximum=_U32_MAX,
    )
    advisor_max_pages_to_scan: int = _knob(
        30000,
        unit="pages",
        sysfs="advisor_max_pages_to_scan",
        help="The advisor's largest pages_to_scan.",
        rank=10,
        minimum=1,
        maximum=_U32_MAX,
    )
    advisor_target_scan_time_s: int = _knob(
        200,
        unit="s",
        sysfs="advisor_target_scan_time",
        help="The full-scan time the advisor aims at.",
        rank=8,
        minimum=1,
        maximum=_U32_MAX,
    )
    stable_node_chains_prune_ms: int = _knob(
        2000,
        unit="ms",
        sysfs="stable_node_chains_prune_millisecs",
        help="How often ksmd prunes stale duplicates of stable-node chains.",
        rank=11,
        minimum=0,
        maximum=_U32_MAX,
        samples=(0, 50, 2000),
    )
    merge_across_nodes: bool = _knob(
        True,
        unit="",
        sysfs="merge_across_nodes",
        help="Merge pages of different NUMA nodes. The model has one node, where on and off "
        "behave the same.",
        rank=12,
        needs_empty=True,
    )
    advisor_initial_cpu_s: float = _knob(
        0.0,
        unit="s",
        sysfs=None,
        help="ksmd's CPU time before the replay starts (the advisor's first step divides it by "
        "the scan time); 0 models a freshly booted host.",
        rank=14,
        minimum=0,
    )

    def __post_init__(self) -> None:
        for spec in KNOBS:
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))
        if self.advisor_max_pages_to_scan < self.advisor_min_pages_to_scan:
            raise KnobError(
                "advisor_max_pages_to_scan is below advisor_min_pages_to_scan",
                hint="raise the maximum",
            )

    @classmethod
    def for_hz(cls, hz: Any) -> KsmKnobs:
        """The kernel defaults at ``hz`` when it is a CONFIG_HZ, else at :data:`DEFAULT_HZ`.

        For HZ read from a trace or the running kernel, which may be missing or odd.
        """
        return cls(hz=valid_hz(hz))

    @property
    def initial_pages_to_scan(self) -> int:
        """pages_to_scan at the start: switching on the advisor sets it to its minimum (§8)."""
        return self.advisor_min_pages_to_scan if self.advisor == "scan-time" else self.pages_to_scan

    def with_(self, **changes: Any) -> KsmKnobs:
        """A copy with some knobs changed (validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every knob."""
        return asdict(self)


def valid_hz(hz: Any) -> int:
    """``hz`` when it is a CONFIG_HZ value (:data:`HZ_VALUES`), else :data:`DEFAULT_HZ`.

    Examples
    --------
    >>> valid_hz(1000), valid_hz(None), valid_hz(123)
    (1000, 250, 250)
    """
    ok = isinstance(hz, int) and not isinstance(hz, bool) and hz in HZ_VALUES
    return int(hz) if ok else DEFAULT_HZ


def _specs() -> tuple[KnobSpec, ...]:
    out = []
    for f in dataclasses.fields(KsmKnobs):
        meta = dict(f.metadata["knob"])
        flag = meta.pop("flag") or "--" + f.name.replace("_", "-")
        default: KnobValue = f.default  # type: ignore[assignment]
        out.append(KnobSpec(name=f.name, kind=type(default), default=default, flag=flag, **meta))
    return tuple(out)


#: The knob table: one :class:`KnobSpec` per field of :class:`KsmKnobs`, in declaration order.
KNOBS: Final[tuple[KnobSpec, ...]] = _specs()
#: Knob names in declaration order.
KNOB_NAMES: Final = tuple(s.name for s in KNOBS)
#: Knob names in display order (:attr:`KnobSpec.rank`).
DISPLAY_ORDER: Final = tuple(s.name for s in sorted(KNOBS, key=lambda s: s.rank))
_BY_NAME: Final = {s.name: s for s in KNOBS}
#: Other accepted name (the kernel's spelling) -> knob name.
KNOB_ALIASES: Final = {a: s.name for s in KNOBS for a in s.aliases}


def spec(name: str) -> KnobSpec:
    """The :class:`KnobSpec` of knob ``name`` (its own name; see :data:`KNOB_ALIASES`)."""
    return _BY_NAME[name]


def knobs_from_sysfs(values: Mapping[str, int | str]) -> dict[str, KnobValue]:
    """The knobs a ``/sys/kernel/mm/ksm`` reading holds, under their table names.

    Examples
    --------
    >>> knobs_from_sysfs({"sleep_millisecs": "200", "advisor_mode": "[none] scan-time", "run": 1})
    {'sleep_ms': 200, 'advisor': 'none'}
    """
    return {
        s.name: s.from_sysfs(values[s.sysfs])
        for s in KNOBS
        if s.sysfs is not None and s.sysfs in values
    }


def knob_flags(values: Mapping[str, Any]) -> list[str]:
    """Command-line options of ``replay``/``validate`` for the knobs that differ from the
    kernel's defaults, in display order (``hz`` always, when given).

    Examples
    --------
    >>> knob_flags({"pages_to_scan": 1000, "sleep_ms": 20, "smart_scan": False, "hz": 250})
    ['--pages-to-scan', '1000', '--no-smart-scan', '--hz', '250']
    """
    out: list[str] = []
    for name in DISPLAY_ORDER:
        s = _BY_NAME[name]
        if name not in values or (values[name] == s.default and name != "hz"):
            continue
        value = s.check(values[name])
        if s.kind is bool:
            out.append(s.flag if value else f"--no-{s.flag[2:]}")
        else:
            out += [s.flag, s.show(value)]
    return out


def sysfs_names() -> dict[str, str]:
    """Knob name -> ``/sys/kernel/mm/ksm`` file, for the knobs the kernel has."""
    return {s.name: s.sysfs for s in KNOBS if s.sysfs is not None}


__all__ = [
    "DEFAULT_HZ",
    "DISPLAY_ORDER",
    "HZ_VALUES",
    "KNOBS",
    "KNOB_ALIASES",
    "KNOB_NAMES",
    "Advisor",
    "KnobSpec",
    "KsmKnobs",
    "knob_flags",
    "knobs_from_sysfs",
    "spec",
    "sysfs_names",
    "valid_hz",
]

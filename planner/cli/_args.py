"""Options shared by commands, declared once, and the args object of each command family.

A command family's options are the fields of one frozen dataclass (:class:`ReplayArgs` for
``replay`` and ``validate``, :class:`WhatifArgs` for ``whatif`` and ``report``), each field an
``Annotated`` typer option. :func:`takes` puts those options, plus one option per ksmd knob
of the knob table (:data:`planner.engine.knobs.KNOBS`), into a command's signature and hands
the command one args object. So both commands of a family parse the same options with the
same defaults and the same rules, and a knob added to the table is an option of every command.

Sizes (``--host-mem``, ``--headroom``, ``--worker-file``, ``--worker-other``...) need a unit
(``64GiB``) or, for ``--headroom``, a percentage (``10%``): a bare ``10`` is refused rather
than read as 10 bytes. The review's gates (``--max-ksmd-cpu``, ``--max-time-to-90``,
``--near-best``) are declared here too, next to the options they judge.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import shlex
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

import typer

from planner.engine.knobs import DISPLAY_ORDER, KNOBS, KnobSpec, KsmKnobs, spec
from planner.engine.options import MAX_DURATION_S

if TYPE_CHECKING:
    from planner.policy import PolicySet
    from planner.whatif.capacity import CapacityInputs
    from planner.whatif.extrapolate import ExtrapolationSpec
    from planner.whatif.grid import KnobGrid

#: Most local worker processes (``--workers``). A host offers at most a few hundred cores and
#: each worker holds a replay in memory, so more would only add memory; use a Dask cluster
#: (``--scheduler``) for more parallelism than one host has.
MAX_WORKERS = 1024
#: Longest wait for a Dask scheduler (``--cluster-timeout``), s.
MAX_CLUSTER_TIMEOUT_S = 3600.0
#: Headroom when ``--host-mem`` is given without ``--headroom``.
DEFAULT_HEADROOM = "10%"
#: Options that change how a command runs, never what it computes: left out of a
#: reproduce command.
RUN_ONLY = frozenset({"workers", "scheduler", "cluster_timeout", "out", "force", "as_json"})


class EngineChoice(StrEnum):
    """``--engine`` values."""

    vectorized = "vectorized"
    reference = "reference"


class PrctlAtChoice(StrEnum):
    """``--prctl-at`` values (:data:`planner.engine.registration.PrctlAt`)."""

    exec = "exec"
    running = "running"


# ----------------------------------------------------------------------------- sizes

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z%]*)\s*$")


def _size_text(option: str, text: str, *, percent: bool = False) -> str:
    """``text`` if it is a size with a unit (or ``0``, or with ``percent`` a percentage).

    Raises
    ------
    UsageProblem
        A number without a unit (``10``: ten bytes is never what is meant).
    """
    from planner.errors import UsageProblem

    m = _SIZE.match(text)
    if m is not None and not m.group(2) and float(m.group(1)) != 0:
        also = f" or {m.group(1)}%" if percent else ""
        raise UsageProblem(
            f"{option} {text!r} has no unit",
            hint=f"write the unit, e.g. {m.group(1)}GiB or {m.group(1)}MiB{also}",
        )
    return text


# ----------------------------------------------------------------------------- options

Trace = Annotated[
    Path, typer.Argument(help="Trace directory (from capture or ingest).", show_default=False)
]
Host = Annotated[str | None, typer.Option("--host", help="Host of a multi-host trace.")]
Hosts = Annotated[
    list[str] | None,
    typer.Option(
        "--host", metavar="HOST", help="Only this host of a multi-host trace (repeatable)."
    ),
]
Engine = Annotated[
    EngineChoice,
    typer.Option("--engine", help="Replay engine: vectorized (fast) or reference (oracle)."),
]
Policies = Annotated[
    Path | None,
    typer.Option("--policies", help="TOML file of policy sets to compare (docs/policies.md)."),
]
SetNames = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="NAME", help="Only this set of --policies (repeatable)."),
]
Presets = Annotated[
    list[str] | None,
    typer.Option(
        "--preset",
        metavar="NAME",
        help="Built-in policy set to compare (repeatable; 'all' for every preset). Default "
        "without --policies: off, prctl-all, workers-prctl, madvise-heap. Presets come before "
        "the sets of --policies.",
    ),
]
Grid = Annotated[
    Path | None,
    typer.Option("--grid", help="TOML file of knob lists (the knob options override it)."),
]
KnobItems = Annotated[
    list[str] | None,
    typer.Option(
        "--knob",
        metavar="NAME=V1,V2",
        help="A knob by its name or kernel spelling (repeatable), e.g. advisor_max_cpu=40,70.",
    ),
]
CrossDomain = Annotated[
    str | None,
    typer.Option(
        "--cross-domain",
        help="Merging across security domains: allow, deny or allow,deny (default: each "
        "set's own).",
    ),
]
SettleScans = Annotated[
    int | None,
    typer.Option("--settle-scans", help="Full scans replayed after the last snapshot (24).", min=0),
]
CanaryOption = Annotated[
    Path | None,
    typer.Option(
        "--observed",
        help="A canary recording of the traced processes ('ksm-planner observe --ksm-pages'): "
        "its same-content writes (merges lost with the bytes unchanged) calibrate the write "
        "model.",
    ),
]
WritesFlag = Annotated[
    bool,
    typer.Option(
        "--writes/--no-writes",
        help="Replay the writes a sampled (v2) trace recorded between snapshots, and after "
        "the last one at its rates (--no-writes: the snapshots alone, for comparison).",
    ),
]
GrowthFlag = Annotated[
    bool,
    typer.Option(
        "--growth/--no-growth",
        help="Continue after the last snapshot the growth the last three show, when it "
        "slows down (a saturating fit; --no-growth: the pages of the last snapshot alone).",
    ),
]
PrctlAtOption = Annotated[
    PrctlAtChoice,
    typer.Option(
        "--prctl-at",
        help="When prctl policies set PR_SET_MEMORY_MERGE: exec (before exec: systemd "
        "MemoryKSM=, a launcher; the [stack] exec creates is not mergeable) or running "
        "(inside the running process: every mapping).",
    ),
]
Duration = Annotated[
    float | None,
    typer.Option(
        "--duration",
        help=f"Replay this many seconds instead (at most {MAX_DURATION_S:.0f}, 7 days).",
        min=0.001,
        max=MAX_DURATION_S,
    ),
]
CostProfileOption = Annotated[
    Path | None,
    typer.Option(
        "--cost-profile",
        help="ksmd cost profile (from 'ksm-planner calibrate'). Default: the one shipped for "
        "the trace's CPU, else the reference machine's.",
    ),
]
HostLoadOption = Annotated[
    float | None,
    typer.Option(
        "--host-load",
        metavar="RUNNABLE_PER_CPU",
        help="CPU load ksmd (nice 5) competes with: other runnable tasks per CPU (0: idle; "
        "1: every CPU busy with one task). Default: the load the trace recorded (an idle "
        "host for version-1 traces).",
        min=0.0,
        max=1000.0,
    ),
]
HostMem = Annotated[
    str | None,
    typer.Option("--host-mem", help="Memory of a host, e.g. 64GiB: computes the capacity."),
]
Headroom = Annotated[
    str | None,
    typer.Option(
        "--headroom",
        help=f"Memory kept free: a size (4GiB) or a share of --host-mem (10%). "
        f"Default with --host-mem: {DEFAULT_HEADROOM}.",
    ),
]
WorkerFile = Annotated[
    str | None,
    typer.Option(
        "--worker-file",
        help="Per worker: file-backed pages only it maps, e.g. 1MiB (default: measured from "
        "the trace, else assumed; docs/capacity.md).",
    ),
]
WorkerShmem = Annotated[
    str | None,
    typer.Option("--worker-shmem", help="Per worker: shared memory (default: as --worker-file)."),
]
WorkerPageTables = Annotated[
    str | None,
    typer.Option(
        "--worker-page-tables", help="Per worker: page tables (default: as --worker-file)."
    ),
]
WorkerOther = Annotated[
    str | None,
    typer.Option(
        "--worker-other",
        help="Per worker: kernel objects and any other memory the trace does not hold, e.g. "
        "30MiB (default: as --worker-file).",
    ),
]
BaseOther = Annotated[
    str | None,
    typer.Option(
        "--base-other",
        help="Once per host: file pages every worker maps and the base processes' overhead "
        "(default: as --worker-file).",
    ),
]
HostCpus = Annotated[
    float | None,
    typer.Option(
        "--host-cpus",
        help="Cores of a host (default: assumed, 4 GiB of --host-mem per CPU).",
        min=0.001,
    ),
]
CpuPerWorker = Annotated[
    float | None,
    typer.Option(
        "--cpu-per-worker",
        help="Cores a worker needs at its planned load (default: measured from the trace, "
        "else unknown: no CPU bound).",
        min=0.0001,
    ),
]
Replicas = Annotated[
    int | None,
    typer.Option("--replicas", help="Project the saving to N replicas per host.", min=1),
]
Group = Annotated[
    str,
    typer.Option(
        "--group",
        help="The replicas: siblings, all, comm:REGEX, cmdline:REGEX, label:KEY=VALUE, "
        "rule:NAME, pid:1,2.",
    ),
]
Bootstrap = Annotated[
    int, typer.Option("--bootstrap", help="Bootstrap resamples of the fit.", min=10)
]
Confidence = Annotated[
    float, typer.Option("--confidence", help="Confidence level of the intervals, in [0.5, 1).")
]
Observed = Annotated[
    Path | None,
    typer.Option("--observed", help="Recording of 'ksm-planner observe' to compare with."),
]
MaxKsmdCpu = Annotated[
    str,
    typer.Option(
        "--max-ksmd-cpu",
        help="Gate: ksmd CPU a recommendation may use, a share of the planned host's CPUs "
        "(of one core without --host-mem).",
    ),
]
MaxTimeTo90 = Annotated[
    str,
    typer.Option(
        "--max-time-to-90",
        help="Gate: time to 90 % of the saving on the planned host (s, min, h).",
    ),
]
NearBest = Annotated[
    str,
    typer.Option(
        "--near-best",
        help="Savings within this share of the best count as equal; the cheapest wins.",
    ),
]
Scheduler = Annotated[
    str | None,
    typer.Option("--scheduler", help="Run on the Dask cluster at ADDRESS (extra 'dist')."),
]
ClusterTimeout = Annotated[
    float,
    typer.Option(
        "--cluster-timeout",
        help="Seconds to wait for the Dask scheduler.",
        min=0.1,
        max=MAX_CLUSTER_TIMEOUT_S,
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help=f"Local worker processes (default: the cores; at most {MAX_WORKERS}).",
        min=1,
        max=MAX_WORKERS,
    ),
]


# ----------------------------------------------------------------------------- knobs


def _knob_help(spec: KnobSpec, mode: Literal["value", "list"]) -> str:
    if spec.name == "hz":
        default = "the trace's, else 250" + (
            " (validate: this kernel's)" if mode == "value" else ""
        )
    else:
        unit = f" {spec.unit}" if spec.unit and spec.unit != "%" else spec.unit
        default = f"{spec.show(spec.default)}{unit}"
    kernel = f" [{spec.sysfs}]" if spec.sysfs is not None and spec.sysfs != spec.name else ""
    if mode == "list":
        return f"{spec.help}{kernel} Comma-separated values, one scenario each (default {default})."
    return f"{spec.help}{kernel} Default: {default}."


def _knob_parameter(spec: KnobSpec, mode: Literal["value", "list"]) -> inspect.Parameter:
    """The command-line option of one knob: one value, or a comma-separated list."""
    flags: tuple[str, ...] = (spec.flag,)
    kind: Any = str
    metavar: str | None = "V1,V2"
    if mode == "value":
        kind, metavar = spec.kind, None
        if spec.kind is bool:
            flags = (f"{spec.flag}/--no-{spec.flag[2:]}",)
    option = typer.Option(*flags, help=_knob_help(spec, mode), show_default=False, metavar=metavar)
    return inspect.Parameter(
        _knob_param(spec.name),
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


def _flag(name: str) -> str:
    """The option of a field: ``worker_file`` -> ``--worker-file``."""
    return "--" + name.replace("_", "-")


def _knob_param(name: str) -> str:
    return f"knob__{name}"


# ----------------------------------------------------------------------------- args objects


@dataclass(frozen=True)
class ReplayArgs:
    """What ``replay`` and ``validate`` share: the trace, the host, the engine, the knobs."""

    KNOB_MODE: ClassVar[Literal["value", "list"]] = "value"
    KNOBS_AFTER: ClassVar[str] = "host"

    trace: Trace
    host: Host = None
    engine: Engine = EngineChoice.vectorized
    knob_values: Mapping[str, Any] = field(default_factory=dict)
    """The knobs given on the command line (others keep the table's defaults)."""
    command: str = ""
    """The command line, from what the user passed (:func:`command_line`)."""

    def knobs(self, hz: int | None = None) -> KsmKnobs:
        """The knobs: the kernel defaults at ``hz`` (unless ``--hz``), the options over them.

        Raises
        ------
        KnobError
            An impossible value or combination (exit code 2).
        """
        return KsmKnobs.for_hz(hz).with_(**self.knob_values)


@dataclass(frozen=True)
class WhatifArgs:
    """What ``whatif`` and ``report`` share: the inputs, the scenarios and the capacity model."""

    KNOB_MODE: ClassVar[Literal["value", "list"]] = "list"
    KNOBS_AFTER: ClassVar[str] = "grid"

    trace: Trace
    policies: Policies = None
    set_names: SetNames = None
    presets: Presets = None
    grid: Grid = None
    knob_items: KnobItems = None
    cross_domain: CrossDomain = None
    hosts: Hosts = None
    host_mem: HostMem = None
    headroom: Headroom = None
    worker_file: WorkerFile = None
    worker_shmem: WorkerShmem = None
    worker_page_tables: WorkerPageTables = None
    worker_other: WorkerOther = None
    base_other: BaseOther = None
    host_cpus: HostCpus = None
    cpu_per_worker: CpuPerWorker = None
    replicas: Replicas = None
    group: Group = "siblings"
    bootstrap: Bootstrap = 200
    confidence: Confidence = 0.9
    observed: Observed = None
    cost_profile: CostProfileOption = None
    host_load: HostLoadOption = None
    settle_scans: SettleScans = None
    duration_s: Duration = None
    writes: WritesFlag = True
    growth: GrowthFlag = True
    scheduler: Scheduler = None
    cluster_timeout: ClusterTimeout = 30.0
    workers: Workers = None
    knob_values: Mapping[str, Any] = field(default_factory=dict)
    """Knob name -> the comma-separated values given on the command line."""
    command: str = ""
    """The command line, from what the user passed (:func:`command_line`)."""

    @property
    def inputs(self) -> tuple[Path | None, ...]:
        """Every file the command reads (an output must not be one of them)."""
        return (self.trace, self.policies, self.grid, self.cost_profile, self.observed)

    def policy_sets(self) -> list[PolicySet] | None:
        """The policy sets to compare: presets, then the chosen sets of ``--policies``.

        ``None``: the what-if default presets.

        Raises
        ------
        UsageProblem
            An unknown ``--preset`` or ``--set``, or ``--set`` without ``--policies`` (2).
        PolicyError
            The policy file is invalid (4).
        """
        from planner.cli._inputs import policy_sets

        return policy_sets(self.policies, self.set_names or (), self.presets or ()) or None

    def knob_grid(self) -> KnobGrid:
        """The knob grid: ``--grid``, then the knob options and ``--knob`` over it."""
        from planner.whatif.grid import grid_from_options

        return grid_from_options(
            self.grid, dict(self.knob_values), self.knob_items or (), self.cross_domain
        )

    def capacity(self) -> CapacityInputs | None:
        """The capacity model's inputs (``None`` without ``--host-mem``).

        Raises
        ------
        UsageProblem
            A capacity option without ``--host-mem``, or a size without a unit (2).
        """
        from planner.errors import UsageProblem
        from planner.whatif.capacity import capacity_from_options

        sizes = {
            "worker_file": self.worker_file,
            "worker_shmem": self.worker_shmem,
            "worker_page_tables": self.worker_page_tables,
            "worker_other": self.worker_other,
            "base_other": self.base_other,
        }
        if self.host_mem is None:
            given = [
                flag
                for flag, value in (
                    ("--headroom", self.headroom),
                    *((_flag(k), v) for k, v in sizes.items()),
                    ("--host-cpus", self.host_cpus),
                    ("--cpu-per-worker", self.cpu_per_worker),
                )
                if value is not None
            ]
            if given:
                raise UsageProblem(
                    f"capacity options need --host-mem ({', '.join(given)} given)",
                    hint="give --host-mem, e.g. 64GiB",
                )
            return None
        return capacity_from_options(
            _size_text("--host-mem", self.host_mem),
            headroom=_size_text("--headroom", self.headroom or DEFAULT_HEADROOM, percent=True),
            host_cpus=self.host_cpus,
            cpu_per_worker=self.cpu_per_worker,
            **{k: None if v is None else _size_text(_flag(k), v) for k, v in sizes.items()},
        )

    def extrapolation(self, capacity: CapacityInputs | None) -> ExtrapolationSpec | None:
        """The replica-growth fit, when capacity, ``--replicas`` or ``--group`` asks for it."""
        from planner.whatif.extrapolate import ExtrapolationSpec

        if capacity is None and self.replicas is None and self.group == "siblings":
            return None
        return ExtrapolationSpec(
            group=self.group,
            replicas=self.replicas,
            n_resamples=self.bootstrap,
            confidence=self.confidence,
        )


# ----------------------------------------------------------------------------- takes()

_A = TypeVar("_A", ReplayArgs, WhatifArgs)


def takes(args_type: type[_A]) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a command ``fn(args, **own)`` so that typer sees every shared option.

    The command's signature becomes: the fields of ``args_type`` that are options (with one
    option per knob of the knob table after the field named ``KNOBS_AFTER``), then the
    command's own parameters. The command is called with one ``args_type`` instance.
    """
    hints = typing.get_type_hints(args_type, include_extras=True)
    option_fields = [f for f in dataclasses.fields(args_type) if _is_option(hints[f.name])]
    knob_params = [_knob_parameter(spec(n), args_type.KNOB_MODE) for n in DISPLAY_ORDER]

    def decorate(fn: Callable[..., Any]) -> Any:
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(fn, eval_str=True).parameters.values()
        ][1:]
        params = [
            inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        ]
        for f in option_fields:
            default = f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty
            params.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=default,
                    annotation=hints[f.name],
                )
            )
            if f.name == args_type.KNOBS_AFTER:
                params += knob_params
        params += own

        def command(**kwargs: Any) -> Any:
            ctx = kwargs.pop("ctx")
            args = _build(args_type, option_fields, kwargs, command_line(ctx))
            return fn(args, **kwargs)

        def parse(ctx: typer.Context) -> _A:
            return _build(args_type, option_fields, dict(ctx.params), command_line(ctx))

        command.parse_args = parse  # type: ignore[attr-defined]
        command.__name__ = fn.__name__
        command.__qualname__ = fn.__qualname__
        command.__doc__ = fn.__doc__
        command.__module__ = fn.__module__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _build(
    args_type: type[_A],
    option_fields: list[dataclasses.Field[Any]],
    kwargs: dict[str, Any],
    command: str,
) -> _A:
    """The args object of a command's parameters (they are removed from ``kwargs``)."""
    values = {f.name: kwargs.pop(f.name) for f in option_fields}
    knobs = {s.name: v for s in KNOBS if (v := kwargs.pop(_knob_param(s.name))) is not None}
    return args_type(**values, knob_values=knobs, command=command)


def parse_args(command_name: str, argv: list[str]) -> ReplayArgs | WhatifArgs:
    """The args object ``ksm-planner COMMAND ARGV...`` would run with (nothing is run).

    For tests and tools that check what a command line means.
    """
    from planner.cli import load_commands
    from planner.cli._app import app

    load_commands([command_name])  # a command registers itself when its module is imported
    group = typer.main.get_command(app)
    cmd = group.commands[command_name]  # type: ignore[attr-defined]
    with cmd.make_context(command_name, list(argv)) as ctx:
        return cmd.callback.parse_args(ctx)  # type: ignore[no-any-return]


def _is_option(annotation: Any) -> bool:
    from typer.models import ParameterInfo

    return any(isinstance(m, ParameterInfo) for m in getattr(annotation, "__metadata__", ()))


def command_line(ctx: typer.Context, *, skip: frozenset[str] = RUN_ONLY) -> str:
    """The command line of ``ctx`` rebuilt from the parameters the user gave, in order.

    Options left at their defaults are not written (a later version's defaults apply to
    them, as they would to the user's own command); nor are those in ``skip``, which change
    how the command runs but not what it computes.
    """
    parts = ["ksm-planner", ctx.info_name or ""]
    for param in ctx.command.params:
        name = param.name or ""
        source = ctx.get_parameter_source(name)
        if name in skip or source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params.get(name)
        opts = list(getattr(param, "opts", ()))
        if getattr(param, "param_type_name", "") == "argument":
            parts.append(str(value))
        elif getattr(param, "is_flag", False):
            secondary = list(getattr(param, "secondary_opts", ()))
            if value:
                parts.append(opts[0])
            elif secondary:
                parts.append(secondary[0])
        elif getattr(param, "multiple", False):
            for v in value or ():
                parts += [opts[0], _text(v)]
        else:
            parts += [opts[0], _text(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _text(value: Any) -> str:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


__all__ = [
    "MAX_WORKERS",
    "EngineChoice",
    "ReplayArgs",
    "WhatifArgs",
    "command_line",
    "parse_args",
    "takes",
]

"""Shared options: ``whatif`` and ``report`` parse the same inputs to the same args, with the
same defaults and the same rules; sizes need a unit; the reproduce command is what was typed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from planner.cli._args import MAX_WORKERS, WhatifArgs, parse_args
from planner.errors import UsageProblem

Cli = Callable[[Sequence[object]], tuple[int, str, str]]

POLICIES = """
[sets.workers]
[[sets.workers.rules]]
match = { root = false }
action = "prctl"

[sets.everything]
default = "prctl"
"""

#: Command lines (after the trace) that whatif and report must read the same way.
SAME_INPUTS = [
    [],
    ["--host-mem", "16GiB"],
    ["--host-mem", "16GiB", "--headroom", "2GiB", "--worker-other", "30MiB"],
    ["--host-mem", "16GiB", "--worker-file", "1MiB", "--worker-shmem", "0", "--base-other", "8MiB"],
    ["--host-mem", "16GiB", "--worker-page-tables", "200KiB"],
    ["--policies", "{policies}", "--set", "everything@a"],
    ["--host-mem", "64GiB", "--host-cpus", "16", "--cpu-per-worker", "0.5", "--replicas", "40"],
    ["--preset", "all", "--pages-to-scan", "100,1000", "--sleep-ms", "20,200"],
    ["--preset", "off", "--policies", "{policies}", "--set", "everything", "--set", "workers"],
    ["--smart-scan", "on,off", "--merge-across-nodes", "on,off", "--knob", "advisor_max_cpu=40"],
    ["--group", "comm:gunicorn", "--bootstrap", "50", "--confidence", "0.8", "--hz", "1000"],
    ["--settle-scans", "6", "--cross-domain", "allow,deny", "--workers", "2"],
]


def _parse(command: str, trace: Path, extra: Sequence[str], policies: Path) -> WhatifArgs:
    argv = [str(trace), *(a.format(policies=policies) for a in extra)]
    if command == "report":
        argv += ["--out", "review"]
    args = parse_args(command, argv)
    assert isinstance(args, WhatifArgs)
    return args


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    p = tmp_path / "policies.toml"
    p.write_text(POLICIES)
    return p


@pytest.mark.parametrize("extra", SAME_INPUTS, ids=lambda e: " ".join(e) or "defaults")
def test_whatif_and_report_parse_the_same_inputs_alike(
    workers_trace: Path, policies: Path, extra: list[str]
) -> None:
    a = _parse("whatif", workers_trace, extra, policies)
    b = _parse("report", workers_trace, extra, policies)
    assert dataclasses.replace(a, command="") == dataclasses.replace(b, command="")
    assert a.command.replace("whatif", "report", 1) == b.command
    # and what the library receives from them
    assert a.policy_sets() == b.policy_sets()
    assert a.knob_grid() == b.knob_grid()
    assert a.capacity() == b.capacity()
    assert a.extrapolation(a.capacity()) == b.extrapolation(b.capacity())


def test_the_defaults_are_one_set(workers_trace: Path, policies: Path) -> None:
    a = _parse("whatif", workers_trace, ["--host-mem", "16GiB"], policies)
    cap = a.capacity()
    assert cap is not None
    # per-worker sizes left out are measured from the trace (else assumed), not zero
    assert (cap.headroom_fraction, cap.headroom_bytes, cap.worker_other_bytes) == (0.1, 0, None)
    assert a.cluster_timeout == 30.0
    assert _parse("whatif", workers_trace, [], policies).capacity() is None


def test_presets_come_before_the_sets_of_a_policy_file(workers_trace: Path, policies: Path) -> None:
    args = [
        "--policies",
        "{policies}",
        "--preset",
        "off",
        "--set",
        "everything",
        "--set",
        "workers",
    ]
    for command in ("whatif", "report"):
        sets = _parse(command, workers_trace, args, policies).policy_sets()
        assert sets is not None
        assert [s.name for s in sets] == ["off", "everything", "workers"]


@pytest.mark.parametrize("command", ["whatif", "report"])
@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["--host-mem", "16GiB", "--headroom", "10"], 2, "--headroom '10' has no unit"),
        (["--host-mem", "16"], 2, "--host-mem '16' has no unit"),
        (["--host-mem", "16GiB", "--worker-other", "30"], 2, "--worker-other '30' has no unit"),
        (["--host-cpus", "8", "--cpu-per-worker", "1"], 2, "capacity options need --host-mem"),
        (["--headroom", "10%"], 2, "capacity options need --host-mem"),
        (["--preset", "nosuch"], 2, "--preset 'nosuch' is not a preset"),
        (["--policies", "{policies}", "--set", "nosuch"], 2, "--set 'nosuch'"),
        (["--set", "x"], 2, "--set needs --policies"),
        (["--workers", str(MAX_WORKERS + 1)], 2, "--workers"),
        (["--workers", "0"], 2, "--workers"),
        (["--cluster-timeout", "99999"], 2, "--cluster-timeout"),
    ],
)
def test_the_same_mistakes_are_the_same_errors(
    cli: Cli,
    workers_trace: Path,
    policies: Path,
    tmp_path: Path,
    command: str,
    extra: list[str],
    code: int,
    words: str,
) -> None:
    out = tmp_path / "out"
    args = [a.format(policies=policies) for a in extra]
    got, stdout, err = cli([command, workers_trace, "--out", out, *args])
    assert got == code, err
    assert words in err
    assert len(err.strip().splitlines()) == 1, err
    assert stdout == ""
    assert not out.exists()


def test_zero_needs_no_unit(workers_trace: Path, policies: Path) -> None:
    args = _parse("whatif", workers_trace, ["--host-mem", "1GiB", "--headroom", "0"], policies)
    cap = args.capacity()
    assert cap is not None
    assert (cap.headroom_bytes, cap.headroom_fraction) == (0, 0.0)


def test_a_size_is_parsed_once_with_its_unit(workers_trace: Path, policies: Path) -> None:
    args = _parse(
        "whatif", workers_trace, ["--host-mem", "4GiB", "--headroom", "1.5 GiB"], policies
    )
    cap = args.capacity()
    assert cap is not None
    assert cap.headroom_bytes == 3 << 29
    bad = _parse("report", workers_trace, ["--host-mem", "1GiB", "--headroom", "5"], policies)
    with pytest.raises(UsageProblem, match="no unit"):
        bad.capacity()
    bare = _parse("whatif", workers_trace, ["--host-mem", "1GiB", "--worker-file", "5"], policies)
    with pytest.raises(UsageProblem, match="--worker-file '5' has no unit"):
        bare.capacity()
    alone = _parse("report", workers_trace, ["--base-other", "5MiB"], policies)
    with pytest.raises(UsageProblem, match=r"capacity options need --host-mem \(--base-other"):
        alone.capacity()


def test_report_records_the_command_the_user_typed(
    cli: Cli, workers_trace: Path, policies: Path, tmp_path: Path
) -> None:
    out = tmp_path / "review"
    code, stdout, err = cli(
        [
            "report",
            workers_trace,
            "--policies",
            policies,
            "--set",
            "workers",
            "--preset",
            "off",
            "--merge-across-nodes",
            "off",
            "--smart-scan",
            "off",
            "--settle-scans",
            "4",
            "--workers",
            "1",
            "--cluster-timeout",
            "5",
            "--out",
            out,
            "--json",
        ]
    )
    assert code == 0, err
    review = json.loads((out / "data" / "review.json").read_text())
    assert review["provenance"]["command"] == (
        f"ksm-planner report {workers_trace} --policies {policies} --set workers --preset off "
        "--smart-scan off --merge-across-nodes off --settle-scans 4 --out DIR"
    )
    # 2 sets x smart_scan off and on x merge_across_nodes off and on: the review adds the
    # kernel's default of every knob the grid varies (planner.whatif.gridpoints)
    assert json.loads(stdout)["scenarios"] == 8


def test_replay_and_validate_share_their_knob_options(workers_trace: Path) -> None:
    argv = [str(workers_trace), "--pages-to-scan", "1000", "--no-smart-scan", "--hz", "1000"]
    a = parse_args("replay", argv)
    b = parse_args("validate", [*argv, "--kernel"])
    assert (
        a.knob_values == b.knob_values == {"pages_to_scan": 1000, "smart_scan": False, "hz": 1000}
    )
    assert a.knobs(250) == b.knobs(250)
    assert a.knobs(250).hz == 1000  # --hz wins over the trace's or the kernel's
    assert parse_args("replay", [str(workers_trace)]).knobs(300).hz == 300


def test_a_scenarios_replay_command_replays_that_scenario(workers_trace: Path) -> None:
    """replay_command (for the review's appendix) writes every non-default knob and the policy."""
    import shlex

    from planner.engine.knobs import KsmKnobs
    from planner.replay import replay_command

    knobs = KsmKnobs(pages_to_scan=1000, smart_scan=False, merge_across_nodes=False, hz=1000)
    line = replay_command(workers_trace, knobs=knobs.to_dict(), preset="workers-prctl")
    argv = shlex.split(line)
    assert argv[:3] == ["ksm-planner", "replay", str(workers_trace)]
    args = parse_args("replay", argv[2:])
    assert args.knobs(250) == knobs
    assert "--preset workers-prctl" in line


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--preset", "nosuch"], "--preset 'nosuch' is not a preset"),
        (["--preset", "off", "--policy", "{policies}"], "exclude each other"),
    ],
)
def test_replay_takes_a_preset_or_a_policy_file(
    cli: Cli, workers_trace: Path, policies: Path, extra: list[str], words: str
) -> None:
    code, _, err = cli(["replay", workers_trace, *(a.format(policies=policies) for a in extra)])
    assert code == 2, err
    assert words in err

"""``planner.replay``: a trace replayed end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import planner.replay
from planner import _heap as heap
from planner.replay import replay_trace
from planner.testing.builder import World


def test_freed_memory_is_kept_for_the_replay_not_while_preparing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prepare`` uses each array once: blocks kept for reuse there only raised the peak
    (1.52-1.53 -> 1.29-1.30 GB for the 4 M-page replay, docs/engine.md); the replay, which
    allocates arrays of one size over and over, keeps them (fewer page faults)."""
    w = World("h")
    w.spawn(1)
    w.map(1, 0x10000, [1, 1, 2])
    w.snapshot(0.0)
    w.write_trace(tmp_path / "t")
    seen: dict[str, int] = {}
    prepare, replay = planner.replay.prepare_trace, planner.replay.replay

    def preparing(*args: Any, **kwargs: Any) -> Any:
        seen["prepare"] = heap._retaining
        return prepare(*args, **kwargs)

    def replaying(*args: Any, **kwargs: Any) -> Any:
        seen["replay"] = heap._retaining
        return replay(*args, **kwargs)

    monkeypatch.setattr(planner.replay, "prepare_trace", preparing)
    monkeypatch.setattr(planner.replay, "replay", replaying)
    res = replay_trace(tmp_path / "t")
    assert seen == {"prepare": 0, "replay": 1}
    assert res.provenance["trace_path"] == str(tmp_path / "t")
    assert heap._retaining == 0


_ROOT = Path(__file__).resolve().parents[1]


def test_a_canary_of_another_cpu_is_recorded_and_the_fit_says_whose_it_is(
    tmp_path: Path,
) -> None:
    # the canary's host facts name its CPU; the profile fitted to its ksmd is that host's,
    # and the sample trace names another CPU: the one warning says whose the costs are.
    canary = tmp_path / "canary"
    shutil.copytree(_ROOT / "reports" / "canary" / "django-preload", canary)
    meta = json.loads((canary / "observe.json").read_text())
    meta["host"]["cpu"] = "Xeon (family 6, model 106)"
    (canary / "observe.json").write_text(json.dumps(meta))
    res = replay_trace(
        _ROOT / "traces" / "django-preload", knobs={"pages_to_scan": 1000}, observed=canary
    )
    assert res.provenance["cost_fit"]["fitted"]
    assert res.provenance["cost_fit"]["canary_cpu"] == "Xeon (family 6, model 106)"
    (warning,) = res.provenance["cost_warnings"]
    assert warning.startswith("the canary was recorded on Xeon (family 6, model 106), the trace ")
    assert "captured on AMD EPYC (family 25, model 17)" in warning
    assert "are the canary host's, not the traced host's" in warning


def _one_host(out: Path, cpu: str | None) -> Path:
    w = World("h")
    w.spawn(1)
    w.map(1, 0x10000, [1, 1, 2, 3, 3, 3] * 50)
    w.snapshot(0.0)
    w.snapshot(2.0)
    w.write_trace(out, extra=None if cpu is None else {"capture": {"host_cpu": cpu}})
    return out


@pytest.mark.parametrize(
    ("cpu", "profile", "why", "warned"),
    [
        ("AMD EPYC 7B13 (family 25, model 17)", "amd-epyc-25-17", "traced CPU", False),
        ("AMD EPYC 7742 (family 23, model 49)", "amd-epyc-23-49", "traced CPU", False),
        ("Intel Xeon (family 6, model 207)", "default", "traced CPU", False),
        ("Intel Xeon (family 6, model 106)", "default", "default", True),
        (None, "default", "default", False),
    ],
)
def test_a_trace_from_a_cpu_with_a_shipped_profile_is_replayed_with_it(
    tmp_path: Path, cpu: str | None, profile: str, why: str, warned: bool
) -> None:
    # docs/busy-host.md §7: the shipped profile of the traced CPU, said in the provenance;
    # the other-CPU warning only where none was shipped for it
    from planner.engine import CostProfile, ReplayOptions

    res = replay_trace(_one_host(tmp_path / "t", cpu))
    assert res.knobs["cost_profile"] == profile
    choice = res.provenance["cost_profile"]
    assert (choice["name"], choice["why"], choice["traced_cpu"]) == (profile, why, cpu)
    assert bool(res.provenance["cost_warnings"]) is warned
    # a profile given is used as given, the default one too; it prices ksmd's CPU: the same
    # trace under the default differs where another profile was chosen
    given = replay_trace(tmp_path / "t", options=ReplayOptions(cost=CostProfile.default()))
    assert given.provenance["cost_profile"]["why"] == "given"
    assert given.knobs["cost_profile"] == "default"
    assert (given.cost.cpu_s == res.cost.cpu_s) is (profile == "default")


def test_whatif_uses_the_shipped_profile_of_the_traced_cpu(tmp_path: Path) -> None:
    from planner.engine import CostProfile
    from planner.whatif import run_whatif
    from planner.whatif.executors import InlineExecutor

    trace = _one_host(tmp_path / "t", "AMD EPYC (family 25, model 17)")
    res = run_whatif(trace, executor=InlineExecutor())
    assert res.replay_options.cost_profile == "amd-epyc-25-17"
    assert res.replay_options.cost_profile_cpu == "AMD EPYC (family 25, model 17)"  # the review's
    assert not any("cost profile" in w for w in res.warnings)
    given = run_whatif(trace, executor=InlineExecutor(), cost_profile=CostProfile.default())
    assert given.replay_options.cost_profile == "default"  # as given
    assert any("was measured on Intel Xeon" in w for w in given.warnings)


def test_a_path_that_is_no_trace_fails_before_the_compiled_code_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loading thread is waited for on the way out, so an error raised inside its block
    waited for numba's load too: ``info`` of a missing path took 0.91 s, 0.37 s since."""
    from planner.errors import TraceFormatError
    from planner.trace import summary

    started: list[object] = []

    def loading(modules: object) -> Any:
        started.append(modules)
        raise AssertionError("the compiled code was being loaded")

    monkeypatch.setattr(planner.replay, "compiled_code_loading", loading)
    monkeypatch.setattr(summary, "compiled_code_loading", loading)
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(TraceFormatError):
            replay_trace(bad)
        with pytest.raises(TraceFormatError):
            summary.summarize_trace(bad)
    assert started == []

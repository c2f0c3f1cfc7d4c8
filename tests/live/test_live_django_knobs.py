"""The Django sample's canary at one knob setting predicting another (issue 10: "a canary at
one knob setting predicts another within 10 %"; docs/live-validation.md, "Django canaries at
two knob settings: run against knob").

Two canaries of the sample workload are recorded with ``reports/canary/record.py``: one at
1000 pages / 20 ms (72 s, the example's setting) and one at 100 pages / 20 ms (150 s: five
full scans). The sample trace ``traces/django-preload`` is then replayed at each canary's knobs
for its duration, calibrated by the *other* canary (``replay --observed``), and scored as
``docs/measure/canary_rows.py`` does: mean predicted against mean real ``pages_sharing`` over
the second half of the recording. Repeated canaries of one setting differ by 0.2-1.5 %; the
two settings' kernel levels by 8-9 %, which the model must reproduce.

Then canaries predict ksmd's cost (full scans, CPU seconds) at another setting: 1000 and 4000
pages each other's, whose batches cross ticks (docs/busy-host.md §4, "A canary of short
batches"), and 100 pages both, whose short batches take their share from ksmd's wait for a
CPU (§4, "The scheduler's account").

Not in the default run (``live`` and ``slow``): ``pytest -m live tests/live``; about 13
minutes (three recordings of the workload, eight replays) plus any wait for the KSM lock.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from planner.kernel.sysfs import KsmSysfs

pytestmark = [pytest.mark.kernel, pytest.mark.live, pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
LOCK_WAIT_S = 900.0
TARGET = 0.10
#: name -> (pages_to_scan, seconds observed); sleep 20 ms both
SETTINGS = {"1000": (1000, 72.0), "100": (100, 150.0), "4000": (4000, 72.0)}
#: issue 10's bound on ksmd's CPU seconds and full scans, relative to the kernel's
COST_TARGET = 0.20
#: The interpreter that runs the workload, named as the sample trace's processes are
#: (``python``): the canary's rates reach the trace's rows by process role, whose key is the
#: ``comm``, and a canary of ``python3`` processes would calibrate none of them.
_PYTHON = str(
    Path(sys.executable).with_name("python")
    if Path(sys.executable).with_name("python").exists()
    else sys.executable
)


def _scorer() -> ModuleType:
    """``docs/measure/canary_rows.py``: the scoring of the docs' canary tables."""
    spec = importlib.util.spec_from_file_location(
        "canary_rows", ROOT / "docs" / "measure" / "canary_rows.py"
    )
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@pytest.fixture(scope="module")
def canaries(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``canaries(name)``: the recording at that setting (recorded once, cached). Each
    recording holds the KSM lease (every knob restored) and stops the workload."""
    if not KsmSysfs().available():
        pytest.skip("no /sys/kernel/mm/ksm: this kernel has no KSM")
    if os.geteuid() != 0:
        pytest.skip("canaries write /sys/kernel/mm/ksm and read other processes: need root")
    for module in ("django", "gunicorn"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the Django sample needs {module}: pip install -e '.[sample]'")
    done: dict[str, Path | str] = {}

    def get(name: str) -> Path:
        if name not in done:
            pages, duration_s = SETTINGS[name]
            out = tmp_path_factory.mktemp(f"django-{pages}-pages-") / "canary"
            cmd = [
                _PYTHON, str(ROOT / "reports" / "canary" / "record.py"),
                "--out", str(out), "--pages-to-scan", str(pages), "--sleep-ms", "20",
                "--duration", str(duration_s),
            ]  # fmt: skip
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                if run.returncode == 0:
                    done[name] = out
                    break
                if "KSM lock" in run.stderr and time.monotonic() < deadline:
                    time.sleep(15)  # another run holds KSM: wait for it
                    continue
                done[name] = f"record.py at {pages} pages failed: {run.stderr.strip()[-400:]}"
                break
        got = done[name]
        if isinstance(got, str):
            if "KSM lock" in got:
                pytest.skip(got)
            pytest.fail(got)
        return got

    return get


def _replay(canary: Path, knobs_of: Path) -> dict[str, Any]:
    doc = json.loads((knobs_of / "observe.json").read_text())
    knobs = doc["knobs_at_start"]
    cmd = [
        sys.executable, "-m", "planner", "replay", str(ROOT / "traces" / "django-preload"),
        "--pages-to-scan", str(knobs["pages_to_scan"]),
        "--sleep-ms", str(knobs["sleep_millisecs"]),
        "--duration", str(round(doc["duration_s"])), "--observed", str(canary), "--json",
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


@pytest.mark.parametrize(
    ("canary", "knobs"),
    [
        ("1000", "100"),
        ("100", "1000"),
    ],
)
def test_a_django_canary_at_one_knob_setting_predicts_another(
    canary: str, knobs: str, canaries: Callable[[str], Path]
) -> None:
    src, dst = canaries(canary), canaries(knobs)
    r = _scorer().score(_replay(src, dst), str(dst))
    assert abs(r["error"]) <= TARGET, (
        f"canary at {canary} pages / 20 ms predicting {knobs} pages / 20 ms: pages_sharing over "
        f"the second half {r['model_half']:.0f} against the kernel's {r['kernel_half']:.0f} "
        f"({r['error'] * 100:+.1f} %, target ±{TARGET * 100:.0f} %); full scans "
        f"{r['model_full_scans']:.0f} ({r['kernel_full_scans']:.0f}), ksmd CPU "
        f"{r['model_cpu_s']:.2f} s ({r['kernel_cpu_s']:.2f} s), copy-on-write "
        f"{r['model_cow_per_s']:.0f}/s ({r['kernel_cow_per_s']:.0f}/s); load average now "
        f"{_loadavg()}"
    )


@pytest.mark.parametrize(
    ("canary", "knobs"), [("1000", "4000"), ("4000", "1000"), ("100", "1000"), ("100", "4000")]
)
def test_a_canary_predicts_ksmds_cost_at_another_setting(
    canary: str, knobs: str, canaries: Callable[[str], Path]
) -> None:
    """ksmd's share of a CPU, fitted to a canary, predicts its full scans and CPU seconds at
    another setting within issue 10's ±20 %. Batches that last (1000 and 4000 pages: 2-8 ms
    of CPU) tell the share by their period (docs/busy-host.md §4, "A canary of short
    batches": measured +0..+16 %); a 100-page canary's batches end inside their tick, and
    its period's guess made them 29-63 % too few, so ksmd's wait for a CPU, which the
    recording now holds, picks the share (§4, "The scheduler's account": within 8 %)."""
    src, dst = canaries(canary), canaries(knobs)
    r = _scorer().score(_replay(src, dst), str(dst))
    for what, model, kernel in (
        ("full scans", r["model_full_scans"], r["kernel_full_scans"]),
        ("ksmd CPU s", r["model_cpu_s"], r["kernel_cpu_s"]),
    ):
        error = model / kernel - 1
        assert abs(error) <= COST_TARGET, (
            f"canary at {canary} pages / 20 ms predicting {knobs} pages / 20 ms: {what} "
            f"{model:.2f} against the kernel's {kernel:.2f} ({error * 100:+.1f} %, target "
            f"±{COST_TARGET * 100:.0f} %); pages_sharing {r['error'] * 100:+.1f} %; load "
            f"average now {_loadavg()}"
        )

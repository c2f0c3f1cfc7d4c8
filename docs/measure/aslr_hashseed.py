"""How ASLR and the str-hash seed change dedup between independently started interpreters.

Used for docs/capture.md §3.3 and §4.11. For each of four conditions, ``COPIES`` separate
Python interpreters (not forked from one another) load the sample Django site of
``traces/django/site`` (``django.setup()``, the URL configuration, the admin, every model and
view module) and build a dict of 20,000 string keys, then wait. ``ksm-planner capture`` takes
one snapshot of them and ``ksm-planner info`` gives the ideal saving among them: frames an
ideal KSM could free, as a share of their frames. The conditions:

* ``default``: ASLR on, ``PYTHONHASHSEED`` unset (random per interpreter);
* ``hashseed``: ``PYTHONHASHSEED=0`` only;
* ``no_aslr``: ``setarch -R`` (personality ``ADDR_NO_RANDOMIZE``) only;
* ``both``: both.

Run from the repository root as root (the capture reads other processes' memory):
``sudo .venv/bin/python docs/measure/aslr_hashseed.py``. Everything is written to a private
temporary directory and deleted; the interpreters are killed by pid at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

COPIES = 4
SITE = Path(__file__).resolve().parents[2] / "traces" / "django" / "site"
PLANNER = [sys.executable, "-m", "planner"]

WORKLOAD = textwrap.dedent(
    """
    import os, sys
    import django
    django.setup()
    from django.urls import get_resolver
    get_resolver().url_patterns
    import django.contrib.admin.sites, blog.views, shop.views, blog.models, shop.models
    table = {f"key-{i:06d}": i for i in range(20000)}
    print("ready", flush=True)
    sys.stdin.read()
    """
)

CONDITIONS = {
    "default": ({}, []),
    "hashseed": ({"PYTHONHASHSEED": "0"}, []),
    "no_aslr": ({}, ["setarch", "-R"]),
    "both": ({"PYTHONHASHSEED": "0"}, ["setarch", "-R"]),
}


def run_condition(name: str, tmp: Path) -> dict[str, object]:
    extra_env, prefix = CONDITIONS[name]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env.update(extra_env)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "ksmsite.settings",
            "KSM_SAMPLE_DB": str(tmp / "unused.sqlite3"),
            "PYTHONPATH": str(SITE),
        }
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(COPIES):
            p = subprocess.Popen(
                [*prefix, sys.executable, "-c", WORKLOAD],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=SITE,
            )
            procs.append(p)
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{name}: an interpreter did not start")
        out = tmp / f"trace-{name}"
        pid_args = [a for p in procs for a in ("--pid", str(p.pid))]
        subprocess.run(
            [
                *PLANNER,
                "capture",
                *pid_args,
                "--out",
                str(out),
                "--key-file",
                str(tmp / "key"),
                "--force",
            ],
            check=True,
            capture_output=True,
        )
        info = json.loads(
            subprocess.run(
                [*PLANNER, "info", str(out), "--json"], check=True, capture_output=True, text=True
            ).stdout
        )
        snap = info["snapshots"][-1]
        return {
            "condition": name,
            "pages": snap["pages"],
            "frames": snap["frames"],
            "ideal_saved_percent": round(100 * snap["ideal_saved_fraction"], 1),
            "cross_process_saved_pages": snap["cross_process_saved_pages"],
            "fork_shared_pages": snap["fork_shared_pages"],
        }
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(timeout=30)
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="ksm-aslr-") as d:
        os.chmod(d, 0o700)
        for name in CONDITIONS:
            row = run_condition(name, Path(d))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The deployment section of a review: how to turn on what was recommended, what to watch,
and the canary steps that compare reality with the review.

Everything here follows from the shown scenario (the recommendation, or the best candidate):
its policy set decides how processes register (systemd ``MemoryKSM=``, a prctl launcher or a
gunicorn hook, or ``madvise`` in the application), its knobs are written to
``/sys/kernel/mm/ksm`` (host-global: every KSM user on the host shares them), and the numbers
to watch are the review's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner.report import common as W
from planner.report import fmt as F
from planner.report.doc import Block, Bullets, Code, Heading, Para, Section
from planner.whatif.gridpoints import kernel_default
from planner.whatif.observed import SYSFS_KNOBS

if TYPE_CHECKING:
    from planner.report.decision import Choice
    from planner.report.inputs import ReviewInputs, ReviewScenario

#: ``prctl(PR_SET_MEMORY_MERGE, 1)``: option 67 of prctl(2) (include/uapi/linux/prctl.h).
PR_SET_MEMORY_MERGE = 67


#: Written whatever their value: the knobs a deployment must not leave to chance.
ALWAYS = ("pages_to_scan", "sleep_millisecs", "smart_scan")


#: The advisor's own knobs (sysfs name -> replay name), written when the advisor runs.
ADVISOR_KNOBS = {
    "advisor_max_cpu": "advisor_max_cpu",
    "advisor_min_pages_to_scan": "advisor_min_pages_to_scan",
    "advisor_max_pages_to_scan": "advisor_max_pages_to_scan",
    "advisor_target_scan_time": "advisor_target_scan_time_s",
}


def _value(v: object) -> int | str:
    return int(v) if isinstance(v, bool | int) else str(v)


def _sysfs(s: ReviewScenario) -> dict[str, int | str]:
    """The scenario's sysfs knobs that matter (kernel names): the main ones, any other that
    differs from the kernel's default, and the advisor's when it runs."""
    values = s.knob_values
    names = dict(SYSFS_KNOBS)
    if values.get("advisor") not in (None, "none"):
        names |= ADVISOR_KNOBS
    out = {}
    for sysfs, ours in names.items():
        if ours not in values:
            continue
        if sysfs in ALWAYS or sysfs in ADVISOR_KNOBS or values[ours] != kernel_default(ours):
            out[sysfs] = _value(values[ours])
    return out


def _registration(s: ReviewScenario) -> list[Block]:
    """How the scenario's processes register with KSM."""
    policy = s.policy_set
    hook = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n\n"
        "def {name}(server{extra}):\n"
        f"    # prctl(PR_SET_MEMORY_MERGE, 1): every mapping mergeable, inherited by fork\n"
        f"    if libc.prctl({PR_SET_MEMORY_MERGE}, 1, 0, 0, 0) != 0:\n"
        "        raise OSError(ctypes.get_errno(), 'PR_SET_MEMORY_MERGE')\n"
    )
    if policy.startswith("madvise"):
        return [
            Para(
                f"`{policy}` marks only some mappings mergeable with `madvise(MADV_MERGEABLE)`: "
                "the application (or its allocator) must make that call on those regions, and "
                "must repeat it after every `exec`. There is no switch to do it from outside."
            )
        ]
    workers_only = policy == "workers-prctl"
    blocks: list[Block] = [
        Para(
            "Per-process KSM needs Linux 6.4 or later. "
            + (
                "Only the forked workers register (the master stays off): set the flag in "
                "each worker right after it is forked, e.g. a gunicorn `post_fork` hook in "
                "`gunicorn.conf.py`:"
                if workers_only
                else "Every process registers, and children inherit the flag over `fork` and "
                "keep it over `exec` (6.7+). Any one of: systemd `MemoryKSM=yes` in the service's "
                "`[Service]` section (systemd 254+); `ksm-planner launch -- CMD` (prctl, then "
                "exec); or a gunicorn `on_starting` hook in `gunicorn.conf.py`, before it forks:"
            )
        ),
        Code(
            hook.format(
                name="post_fork" if workers_only else "on_starting",
                extra=", worker" if workers_only else "",
            ),
            language="python",
        ),
    ]
    if not workers_only:
        blocks.append(Code("[Service]\nMemoryKSM=yes", language="ini"))
    return blocks


def _knobs(s: ReviewScenario) -> list[Block]:
    values = _sysfs(s)
    lines = [f"echo {v} > /sys/kernel/mm/ksm/{k}" for k, v in values.items()]
    tmpfiles = [f"w /sys/kernel/mm/ksm/{k} - - - - {v}" for k, v in values.items()]
    return [
        Para(
            "ksmd's knobs are **host-global**: they apply to every process on the host that uses "
            "KSM (other services, VMs), not to this service alone. Write them, then start ksmd "
            "(`run=1`); keep them across reboots with a tmpfiles.d entry "
            "(`/etc/tmpfiles.d/ksm.conf`):"
        ),
        Code("\n".join([*lines, "echo 1 > /sys/kernel/mm/ksm/run"])),
        Code("\n".join([*tmpfiles, "w /sys/kernel/mm/ksm/run - - - - 1"]), language="text"),
    ]


def _watch(inputs: ReviewInputs, s: ReviewScenario) -> list[Block]:
    h = s.host
    cap = h.capacity
    obs = inputs.whatif.observed
    r = obs.rates if obs is not None else None
    profit = (
        f"about {F.gib(cap.ksm_net_saved_bytes)} per host at {F.integer(cap.workers_with)} workers"
        if cap is not None
        else f"about {F.mib(h.expected_net_saved_bytes)} for the traced processes"
    )
    cow = (
        f"{W.rate(r.observed_cow_per_s)}/s on the canary"
        if r is not None and r.observed_cow_per_s is not None
        else f"at least {W.rate(inputs.cow.breaks_per_s)}/s for the traced processes"
    )
    items = (
        f"`/sys/kernel/mm/ksm/general_profit`: memory KSM saves net of its metadata; expect "
        f"{profit}, reached after about {W.t(h.decisive_time_to_90_s)}. `pages_sharing`, "
        "`pages_shared` and `full_scans` beside it say how far ksmd got.",
        "`/proc/<pid>/ksm_stat` of each worker (`ksm_merging_pages`, `ksm_process_profit`): a "
        "process whose profit stays negative loses memory through KSM and should be left out.",
        f"ksmd's CPU (`pidstat -p $(pgrep -x ksmd) 10`, or utime+stime in "
        f"`/proc/<ksmd pid>/stat`): the review expects {W.share_of_host(s)} "
        f"({F.percent(h.ksmd_cpu_percent)} of one core).",
        f"`cow_ksm` in `/proc/vmstat`: writes that broke a merged page ({cow}); each is a page "
        "fault and a 4 KiB copy in the service's request path.",
        "Free memory against what an unmerge would need ([Risks](#risks)): "
        + (
            f"{F.gib(cap.ksm_saved_bytes)} at {F.integer(cap.workers_with)} workers."
            if cap is not None
            else f"{F.mib(h.saved_bytes)} for the traced processes."
        ),
    )
    return [Bullets(items)]


def _canary(inputs: ReviewInputs, s: ReviewScenario) -> list[Block]:
    knobs = " ".join(f"{k}={v}" for k, v in _sysfs(s).items())
    sets = "\n".join(f"echo {v} > /sys/kernel/mm/ksm/{k}" for k, v in _sysfs(s).items())
    return [
        Para(
            "Before the fleet, one canary host: run the service there as it will run, with "
            "the registration above and ksmd off (`run=0`), warm it up, then record what the "
            f"real ksmd does with the knobs of `{s.name}` ({knobs}) and rebuild this review with "
            "the recording: its first screen then shows the prediction against reality, and "
            "the capacity figures apply the canary's measured error."
        ),
        Code(
            "# on the canary host, as root: the service registered (prctl), ksmd off\n"
            "echo 0 > /sys/kernel/mm/ksm/run\n"
            f"{sets}\n"
            "ksm-planner observe --all --interval 1 --duration 600 --out canary &\n"
            "echo 1 > /sys/kernel/mm/ksm/run\n"
            "wait\n"
            "# then, anywhere the trace is:\n"
            + inputs.command.replace(" --out DIR", "")
            .replace(" --pdf", "")
            .split(" --observed ")[0]
            + " --observed canary --out review-canary"
        ),
        Para(
            "`reports/canary/record.py` runs these steps for the sample workload of this "
            "repository. Roll out host by host after the canary; to roll back, drain workers "
            "first where [Risks](#risks) says an unmerge would not fit."
        ),
    ]


def deployment_section(inputs: ReviewInputs, choice: Choice) -> Section:
    """How to turn on the recommendation, what to watch, and the canary steps."""
    s = choice.shown
    if s is None:
        return Section(
            "deployment",
            "Deployment",
            (Para("Nothing to deploy: no scenario saves memory."),),
            lead="How to turn it on, what to watch, and how to check it on a canary.",
        )
    head = (
        f"How to deploy the recommendation, `{s.name}`."
        if choice.scenario is not None
        else f"No scenario is recommended; these are the steps for the best candidate, "
        f"`{s.name}`, once its blocking gate is settled."
    )
    blocks: list[Block] = [
        Para(head),
        Heading("Register the processes"),
        *_registration(s),
        Heading("Set ksmd's knobs"),
        *_knobs(s),
        Heading("What to watch"),
        *_watch(inputs, s),
        Heading("A canary first"),
        *_canary(inputs, s),
    ]
    return Section(
        "deployment",
        "Deployment",
        tuple(blocks),
        lead="How to turn it on, what to watch, and how to check it on a canary.",
    )


__all__ = ["PR_SET_MEMORY_MERGE", "deployment_section"]

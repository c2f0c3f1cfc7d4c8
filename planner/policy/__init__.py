"""Policy sets: which processes use KSM (prctl, madvise or off), and their security domains.

Load a policy file (TOML, documented in ``docs/policies.md``) or take a built-in preset,
then give the set's resolver to the engine::

    from planner.policy import load_policy, preset
    from planner.engine import replay

    policy = load_policy("policies.toml", "workers")       # or preset("workers-prctl")
    result = replay(host_trace, resolver=policy.resolver())

:func:`match_processes` shows which rule selected which process of a trace.
"""

from __future__ import annotations

from planner.policy.load import dump_policy, load_policies, load_policy, parse_policies, select_sets
from planner.policy.model import Match, PolicySet, Rule, Seed
from planner.policy.presets import DEFAULT_PRESETS, PRESETS, preset, preset_names
from planner.policy.resolve import (
    NO_DOMAIN,
    Decision,
    MatchReport,
    SetResolver,
    check_matches,
    domain_key,
    host_processes,
    match_processes,
)

__all__ = [
    "DEFAULT_PRESETS",
    "NO_DOMAIN",
    "PRESETS",
    "Decision",
    "Match",
    "MatchReport",
    "PolicySet",
    "Rule",
    "Seed",
    "SetResolver",
    "check_matches",
    "domain_key",
    "dump_policy",
    "host_processes",
    "load_policies",
    "load_policy",
    "match_processes",
    "parse_policies",
    "preset",
    "preset_names",
    "select_sets",
]

"""Resolving policy sets on process trees: first match, selectors, inheritance, domains."""

from __future__ import annotations

import pytest

from planner.engine import KsmKnobs, prepare, replay
from planner.errors import PolicyError
from planner.policy import (
    NO_DOMAIN,
    check_matches,
    match_processes,
    parse_policies,
    preset,
)
from planner.testing.builder import World
from planner.trace.io import HostTrace

FAST = KsmKnobs(pages_to_scan=1000, sleep_ms=10)


def tree() -> HostTrace:
    """A master (pid 10) with two workers; an unrelated daemon (20) with a child; a cron job."""
    w = World()
    w.spawn(10, comm="gunicorn", cgroup="/system.slice/web.service", uid=33, labels={"tenant": "a"})
    w.map(10, 0x10000, [1, 2, 3])
    w.spawn(
        20,
        comm="redis-server",
        cgroup="/system.slice/redis.service",
        uid=999,
        labels={"tenant": "b"},
    )
    w.map(20, 0x10000, [1, 2, 3])
    w.spawn(30, comm="cron", cgroup="/system.slice/cron.service", uid=0)
    w.map(30, 0x10000, [9])
    w.snapshot(0.0)
    w.fork(10, 11)
    w.fork(10, 12)
    w.fork(20, 21, comm="redis-bgsave")
    w.snapshot(10.0)
    return w.host_trace()


def decisions(text: str, ht: HostTrace | None = None) -> dict[int, tuple[str, str | None, str]]:
    (policy,) = parse_policies(text)
    rep = match_processes(ht or tree(), policy)
    return {d.pid: (d.mode, d.domain, d.reason) for d in rep.decisions}


def test_first_match_wins_and_default_applies() -> None:
    got = decisions(
        """
[sets.s]
default = "off"
inherit = false
[[sets.s.rules]]
match = { comm = "gunicorn" }
action = "madvise"
kinds = ["heap"]
[[sets.s.rules]]
match = { uid = 33 }
action = "prctl"
"""
    )
    # the master matches rule 1 (comm); its workers match the comm too (fork keeps comm)
    assert got[10] == ("madvise", None, "rule")
    assert got[11] == ("madvise", None, "rule")
    assert got[20] == ("off", None, "default")


def test_selectors() -> None:
    def sel(match: str) -> set[int]:
        got = decisions(
            f'[sets.s]\ninherit = false\n[[sets.s.rules]]\nmatch = {match}\naction = "prctl"\n'
        )
        return {pid for pid, (mode, _, _) in got.items() if mode == "prctl"}

    assert sel('{ comm = "redis.*" }') == {20, 21}
    assert sel('{ comm = "redis" }') == set()  # comm is matched whole
    assert sel('{ cgroup = "/system.slice/*.service" }') == {10, 11, 12, 20, 21, 30}
    assert sel('{ cgroup = "*/web.service" }') == {10, 11, 12}
    assert sel("{ uid = [0, 999] }") == {20, 21, 30}
    assert sel("{ pid = 12 }") == {12}
    assert sel('{ labels = { tenant = "a" } }') == {10, 11, 12}
    assert sel('{ labels = { tenant = "*" } }') == {10, 11, 12, 20, 21}
    assert sel("{ root = true }") == {10, 20, 30}
    assert sel("{ root = false }") == {11, 12, 21}
    assert sel('{ descendants_of = { comm = "gunicorn" } }') == {10, 11, 12}
    assert sel('{ descendants_of = { comm = "gunicorn", include_seed = false } }') == {11, 12}
    assert sel("{ root = false, descendants_of = { uid = 999 } }") == {21}
    assert sel("{}") == {10, 11, 12, 20, 21, 30}


def test_cmdline_is_searched() -> None:
    w = World()
    w.spawn(5, comm="python")
    w.map(5, 0x1000, [1])
    w.snapshot(0.0)
    ht = w.host_trace()
    procs = ht.processes.set_column(
        ht.processes.column_names.index("cmdline"), "cmdline", [["python -m gunicorn app:wsgi"]]
    )
    ht2 = HostTrace(ht.host, ht.snapshots, procs, ht.mappings, ht.pages, ht.trace_hash)
    got = decisions(
        '[sets.s]\n[[sets.s.rules]]\nmatch = { cmdline = "gunicorn" }\naction = "prctl"\n', ht2
    )
    assert got[5][0] == "prctl"
    got = decisions(
        '[sets.s]\n[[sets.s.rules]]\nmatch = { cmdline = "^gunicorn" }\naction = "prctl"\n', ht2
    )
    assert got[5][0] == "off"


def test_prctl_is_inherited_unless_the_child_switches_it_off() -> None:
    text = """
[sets.s]
[[sets.s.rules]]
name = "bgsave off"
match = { comm = "redis-bgsave" }
action = "off"
[[sets.s.rules]]
name = "seeds"
match = { root = true, uid = [33, 999] }
action = "prctl"
domain = "{label:tenant}"
"""
    got = decisions(text)
    assert got[10] == ("prctl", "a", "rule")
    assert got[11] == (
        "prctl",
        "a",
        "inherited",
    )  # no rule matches the worker: inherited, parent's domain
    assert got[21] == ("off", None, "rule")  # prctl(PR_SET_MEMORY_MERGE, 0) in the child
    assert got[30] == ("off", None, "default")
    no_inherit = decisions(text.replace("[sets.s]", "[sets.s]\ninherit = false"))
    assert no_inherit[11] == ("off", None, "default")


def test_madvise_rule_of_a_prctl_child_still_inherits_prctl() -> None:
    got = decisions(
        """
[sets.s]
[[sets.s.rules]]
match = { root = false }
action = "madvise"
kinds = ["heap"]
domain = "workers"
[[sets.s.rules]]
match = { root = true }
action = "prctl"
"""
    )
    assert got[11] == ("prctl", "workers", "inherited")  # merge-any wins; the rule's domain is kept
    assert got[10] == ("prctl", None, "rule")


def test_exec_keeps_prctl_and_loses_madvise() -> None:
    w = World()
    w.spawn(7, comm="sh")
    w.map(7, 0x1000, [1, 2])
    w.spawn(8, comm="sh")
    w.map(8, 0x1000, [1, 2])
    w.snapshot(0.0)
    w.procs[7].comm = "python"  # exec: same pid and start, new image
    w.procs[8].comm = "python"
    w.snapshot(10.0)
    ht = w.host_trace()
    text = """
[sets.s]
[[sets.s.rules]]
match = { comm = "sh", pid = 7 }
action = "prctl"
[[sets.s.rules]]
match = { comm = "sh", pid = 8 }
action = "madvise"
kinds = ["anon"]
"""
    (policy,) = parse_policies(text)
    rep = match_processes(ht, policy)
    by = [(d.pid, d.comm, d.mode, d.reason) for d in rep.decisions]
    assert (7, "python", "prctl", "exec") in by
    assert (8, "python", "off", "default") in by


def test_domain_templates() -> None:
    got = decisions(
        """
[sets.s]
default = "prctl"
default_domain = "uid-{uid}"
[[sets.s.rules]]
match = { comm = "gunicorn" }
action = "prctl"
domain = "web:{label:tenant}:{cgroup}"
[[sets.s.rules]]
match = { comm = "cron" }
action = "prctl"
domain = "{label:tenant}"
"""
    )
    assert got[10][1] == "web:a:/system.slice/web.service"
    assert got[20][1] == "uid-999"
    assert got[30][1] == "none"  # missing label


def test_only_domain_switches_other_domains_off_but_keeps_inheritance() -> None:
    (policy,) = parse_policies(
        '[sets.s]\n[[sets.s.rules]]\nmatch = { root = true, uid = [33, 999] }\naction = "prctl"\n'
        'domain = "{label:tenant}"\n'
    )
    ht = tree()
    inp = prepare(ht, resolver=policy.resolver(only_domain="a"))
    modes = {m.pid: m.registration.mode for m in inp.mms}
    assert modes == {10: "prctl", 11: "prctl", 12: "prctl", 20: "off", 21: "off", 30: "off"}
    inp_b = prepare(ht, resolver=policy.resolver(only_domain="b"))
    assert {m.pid for m in inp_b.mms if m.registration.mode == "prctl"} == {20, 21}
    assert inp_b.mms[[m.pid for m in inp_b.mms].index(10)].registration.domain == "a"


def test_match_report_and_check_matches() -> None:
    ht = tree()
    (policy,) = parse_policies(
        '[sets.s]\n[[sets.s.rules]]\nname = "java"\nmatch = { comm = "java" }\naction = "prctl"\n'
        '[[sets.s.rules]]\nname = "all"\naction = "prctl"\n'
    )
    rep = match_processes(ht, policy)
    assert rep.unmatched_rules == ("java",)
    assert rep.registered == 6
    assert rep.domains == (NO_DOMAIN,)
    assert set(rep.matched["all"]) == {10, 11, 12, 20, 21, 30}
    with pytest.raises(PolicyError, match=r"rule 'java' \(comm=java\) matches no process"):
        check_matches([rep], policy)
    optional = policy.model_copy(
        update={"rules": (policy.rules[0].model_copy(update={"optional": True}), policy.rules[1])}
    )
    assert check_matches([match_processes(ht, optional)], optional) == []
    (nothing,) = parse_policies(
        '[sets.n]\n[[sets.n.rules]]\nmatch = { uid = 5 }\naction = "prctl"\noptional = true\n'
    )
    with pytest.raises(PolicyError, match="enables KSM for no process"):
        check_matches([match_processes(ht, nothing)], nothing)
    # presets only warn; "off" wants nothing and is fine
    lone = World()
    lone.spawn(1, comm="x")
    lone.map(1, 0x1000, [1])
    lone.snapshot(0.0)
    wp = preset("workers-prctl")
    assert check_matches([match_processes(lone.host_trace(), wp)], wp) == [
        "preset 'workers-prctl' enables KSM for no process of this trace"
    ]
    off = preset("off")
    assert check_matches([match_processes(ht, off)], off) == []
    assert rep.to_dict()["unmatched_rules"] == ["java"]


def test_madvise_kinds_restrict_what_the_replay_merges() -> None:
    w = World()
    for pid in (1, 2):
        w.spawn(pid, comm="app")
        w.map(pid, 0x10000, [100 + i for i in range(8)], kind="heap")  # duplicated heap
        w.map(pid, 0x40000, [200 + i for i in range(4)], kind="anon")  # duplicated anon
    w.snapshot(0.0)
    ht = w.host_trace()
    heap = replay(ht, knobs=FAST, resolver=preset("madvise-heap").resolver())
    anon = replay(ht, knobs=FAST, resolver=preset("madvise-anon").resolver())
    every = replay(ht, knobs=FAST, resolver=preset("prctl-all").resolver())
    off = replay(ht, knobs=FAST, resolver=preset("off").resolver())
    assert heap.final_truth.saved_frames == 8
    assert anon.final_truth.saved_frames == 12
    assert every.final_truth.saved_frames == 12
    assert off.final_truth.saved_frames == 0


def test_an_inherited_child_takes_the_default_domain_of_its_own_labels() -> None:
    got = decisions('[sets.s]\ndefault = "prctl"\ndefault_domain = "{label:tenant}"\n')
    assert got[10] == ("prctl", "a", "default")
    assert got[11] == ("prctl", "a", "inherited")
    assert got[21] == ("prctl", "b", "inherited")
    assert got[30] == ("prctl", "none", "default")


# ----------------------------------------------------------------------------- one host, one domain

_TWO_DOMAINS = (
    '[sets.s]\ncross_domain = "{cross}"\n[[sets.s.rules]]\n'
    "match = {{ root = true, uid = [33, 999] }}\n"
    'action = "prctl"\ndomain = "{{label:tenant}}"\n'
)


def test_one_replay_of_a_deny_set_refuses_a_second_domain() -> None:
    # mainline KSM has no per-domain merge boundary: one host replayed with two domains
    # registered would merge across them, which the set forbids
    (policy,) = parse_policies(_TWO_DOMAINS.format(cross="deny"))
    with pytest.raises(PolicyError) as err:
        prepare(tree(), resolver=policy.resolver())
    assert "domains 'a' and 'b' on one host" in err.value.message
    assert err.value.hint is not None
    assert "--policy-set 's@a'" in err.value.hint
    # the what-if keeps the domains apart itself: it may register both in one prepare
    inp = prepare(tree(), resolver=policy.resolver(enforce_cross_domain=False))
    assert {m.pid for m in inp.mms if m.registration.mode == "prctl"} == {10, 11, 12, 20, 21}
    # a set that allows merging across domains replays them together
    (allow,) = parse_policies(_TWO_DOMAINS.format(cross="allow"))
    both = prepare(tree(), resolver=allow.resolver())
    assert {m.pid for m in both.mms if m.registration.mode == "prctl"} == {10, 11, 12, 20, 21}
    # and the match report (no replay) lists both domains without refusing
    assert match_processes(tree(), policy).domains == ("a", "b")


def test_name_at_domain_is_ksm_for_that_domain_only(tmp_path: object) -> None:
    from pathlib import Path

    from planner.policy import load_policy, select_sets

    path = Path(str(tmp_path)) / "p.toml"
    path.write_text(_TWO_DOMAINS.format(cross="deny"))
    one = load_policy(path, "s@b")
    assert (one.name, one.only_domain) == ("s@b", "b")
    inp = prepare(tree(), resolver=one.resolver())
    assert {m.pid for m in inp.mms if m.registration.mode == "prctl"} == {20, 21}
    assert match_processes(tree(), one).domains == ("b",)
    (sel,) = select_sets([load_policy(path, "s")], ["s@a"], source="p.toml")
    assert sel.only_domain == "a"
    with pytest.raises(PolicyError, match="has no policy set 'x'"):
        load_policy(path, "x@a")
    # the same in the file itself
    text = _TWO_DOMAINS.format(cross="deny").replace("[sets.s]\n", '[sets.s]\nonly_domain = "a"\n')
    (fixed,) = parse_policies(text)
    assert fixed.only_domain == "a"
    assert {
        m.pid
        for m in prepare(tree(), resolver=fixed.resolver()).mms
        if m.registration.mode != "off"
    } == {10, 11, 12}


def test_replay_trace_honours_the_sets_cross_domain_rule(tmp_path: object) -> None:
    # ``ksm-planner replay --policy P --policy-set S`` (planner.replay.replay_trace, which
    # calls PolicySet.resolver()): it used to merge across the domains of a deny set
    from pathlib import Path

    from planner.replay import replay_trace

    root = Path(str(tmp_path))
    w = World()
    w.spawn(10, comm="gunicorn", uid=33, labels={"tenant": "a"})
    w.map(10, 0x10000, [1, 2, 3, 4])
    w.spawn(20, comm="gunicorn", uid=999, labels={"tenant": "b"})
    w.map(20, 0x10000, [1, 2, 3, 4])
    w.snapshot(0.0)
    w.snapshot(10.0)
    w.write_trace(root / "t")
    path = root / "p.toml"
    path.write_text(_TWO_DOMAINS.format(cross="deny"))
    with pytest.raises(PolicyError, match="keeps security domains apart"):
        replay_trace(root / "t", knobs=FAST, policy_path=path, policy_set="s")
    alone = replay_trace(root / "t", knobs=FAST, policy_path=path, policy_set="s@a")
    assert alone.final_truth.saved_frames == 0  # pid 10 alone: nothing to merge with
    path.write_text(_TWO_DOMAINS.format(cross="allow"))
    merged = replay_trace(root / "t", knobs=FAST, policy_path=path, policy_set="s")
    assert merged.final_truth.saved_frames == 4  # across the domains: allowed by this set


def test_a_domain_no_process_has_is_refused_by_name(tmp_path: object) -> None:
    """``s@nosuch`` switched every process off silently; it is an error naming the domain."""
    from pathlib import Path

    from planner.policy import load_policy
    from planner.policy.resolve import check_matches

    path = Path(str(tmp_path)) / "p.toml"
    path.write_text(_TWO_DOMAINS.format(cross="deny"))
    nosuch = load_policy(path, "s@nosuch")
    with pytest.raises(PolicyError) as err:
        check_matches([match_processes(tree(), nosuch)], nosuch)
    assert "domain 'nosuch' holds no process" in err.value.message
    assert err.value.hint is not None
    ok = load_policy(path, "s@a")
    assert check_matches([match_processes(tree(), ok)], ok) == []

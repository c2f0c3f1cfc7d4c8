"""Policy files: parsing, validation errors (one line naming the place), set selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.errors import PolicyError
from planner.policy import (
    PRESETS,
    load_policies,
    load_policy,
    parse_policies,
    preset,
    preset_names,
    select_sets,
)

GOOD = """
version = 1

[sets.workers]
description = "gunicorn workers, one domain per tenant label"
default = "off"
default_domain = "{label:tenant}"
cross_domain = "deny"

[[sets.workers.rules]]
name = "web workers"
match = { comm = "gunicorn.*", root = false, cgroup = "/system.slice/web-*.service" }
action = "prctl"

[[sets.workers.rules]]
name = "batch heap"
match = { uid = [1000, 1001], labels = { job = "batch-*" } }
action = "madvise"
kinds = ["heap", "anon"]
ranges = [["0x7f0000000000", "0x7f0000100000"], [4096, 8192]]
domain = "batch"
optional = true

[[sets.workers.rules]]
match = { descendants_of = { pid = 1, include_seed = false } }
action = "off"

[sets.everything]
default = "prctl"
"""


def test_parse_a_complete_file() -> None:
    sets = parse_policies(GOOD)
    assert [s.name for s in sets] == ["workers", "everything"]
    w = sets[0]
    assert w.default_domain == "{label:tenant}"
    assert w.rules[0].match.root is False
    assert w.rules[1].kinds == ("heap", "anon")
    assert w.rules[1].ranges == ((0x7F0000000000, 0x7F0000100000), (4096, 8192))
    assert w.rules[1].match.uid == (1000, 1001)
    assert w.rules[2].label(2) == "rule 3"
    assert w.rules[2].match.descendants_of is not None
    assert w.rules[2].match.descendants_of.include_seed is False
    assert sets[1].default == "prctl"
    assert sets[1].cross_domain == "deny"


def test_single_int_uid_and_pid_become_tuples() -> None:
    (s,) = parse_policies('[sets.a]\nrules = [{action = "prctl", match = {uid = 0, pid = 7}}]\n')
    assert s.rules[0].match.uid == (0,)
    assert s.rules[0].match.pid == (7,)


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("[sets.x]\nfoo = 1\n", "sets.x.foo", "unknown key"),
        (
            '[sets.x]\nrules = [{action = "prctl", match = {comm = "("}}]\n',
            "sets.x.rules[0].match.comm",
            "invalid regular expression",
        ),
        (
            '[sets.x]\nrules = [{action = "prctl", match = {commm = "a"}}]\n',
            "sets.x.rules[0].match.commm",
            "unknown key",
        ),
        ('[sets.x]\nrules = [{action = "madvise"}]\n', "sets.x.rules[0]", "needs kinds"),
        (
            '[sets.x]\nrules = [{action = "prctl", kinds = ["heap"]}]\n',
            "sets.x.rules[0]",
            "only apply to madvise",
        ),
        (
            '[sets.x]\nrules = [{action = "madvise", kinds = ["heapp"]}]\n',
            "sets.x.rules[0].kinds",
            "unknown mapping kind 'heapp'",
        ),
        (
            '[sets.x]\nrules = [{action = "merge"}]\n',
            "sets.x.rules[0].action",
            "'prctl', 'madvise' or 'off'",
        ),
        ("[sets.x]\nrules = [{match = {}}]\n", "sets.x.rules[0].action", "is required"),
        (
            '[sets.x]\nrules = [{action = "madvise", ranges = [[8192, 4096]]}]\n',
            "sets.x.rules[0].ranges",
            "start must be below end",
        ),
        (
            '[sets.x]\nrules = [{action = "madvise", ranges = [["zz", 4096]]}]\n',
            "sets.x.rules[0].ranges",
            "is not an address",
        ),
        (
            '[sets.x]\nrules = [{action = "prctl", domain = "{tenant}"}]\n',
            "sets.x.rules[0].domain",
            "unknown placeholder {tenant}",
        ),
        (
            '[sets.x]\nrules = [{action = "prctl", domain = "{label}"}]\n',
            "sets.x.rules[0].domain",
            "{label:KEY}",
        ),
        (
            '[sets.x]\nrules = [{action = "prctl", match = {uid = "root"}}]\n',
            "sets.x.rules[0].match.uid",
            "integer",
        ),
        (
            '[sets.x]\nrules = [{action = "prctl", match = {labels = {}}}]\n',
            "sets.x.rules[0].match.labels",
            "empty",
        ),
        (
            '[sets.x]\nrules = [{name = "a", action = "prctl"}, {name = "a", action = "off"}]\n',
            "sets.x",
            "two rules are named 'a'",
        ),
        ('[sets.x]\ndefault = "madvise"\n', "sets.x.default", "'off' or 'prctl'"),
        ('[sets.x]\ncross_domain = "maybe"\n', "sets.x.cross_domain", "'allow' or 'deny'"),
        ('[sets."bad name"]\n', "sets.bad name.name", "must start with a letter"),
        ('[sets.x]\nname = "y"\n', "sets.x.name", "unknown key"),
        ("version = 2\n[sets.x]\n", "version", "less than or equal to 1"),
        ("[other]\n", "sets", "is required"),
        ("sets = {}\n", "sets", "defines no policy set"),
    ],
)
def test_bad_files_name_the_place(text: str, where: str, what: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policies(text, source="p.toml")
    line = info.value.one_line()
    assert line.startswith(f"p.toml: {where}: "), line
    assert what in line
    assert "\n" not in line
    assert info.value.hint


def test_not_toml() -> None:
    with pytest.raises(PolicyError, match=r"p.toml: not valid TOML: .*line 1"):
        parse_policies("[sets.x\n", source="p.toml")


def test_load_policy_by_name_and_the_single_set_rule(tmp_path: Path) -> None:
    many = tmp_path / "many.toml"
    many.write_text(GOOD)
    one = tmp_path / "one.toml"
    one.write_text('[sets.only]\ndefault = "prctl"\n')
    assert load_policy(one).name == "only"
    assert load_policy(many, "everything").default == "prctl"
    with pytest.raises(PolicyError, match=r"holds 2 policy sets \(workers, everything\)"):
        load_policy(many)
    with pytest.raises(PolicyError, match="has no policy set 'nope'") as info:
        load_policy(many, "nope")
    assert "workers, everything" in (info.value.hint or "")
    assert [s.name for s in load_policies(many)] == ["workers", "everything"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "absent.toml")


def test_select_sets_keeps_the_order_given() -> None:
    sets = parse_policies(GOOD)
    assert [s.name for s in select_sets(sets, ["everything", "workers"], source="f")] == [
        "everything",
        "workers",
    ]
    assert select_sets(sets, None, source="f") == sets
    with pytest.raises(PolicyError, match="no policy set 'x'"):
        select_sets(sets, ["x"], source="f")


def test_presets() -> None:
    assert set(preset_names()) >= {"off", "prctl-all", "workers-prctl", "madvise-heap"}
    assert preset("off").default == "off"
    assert not preset("off").rules
    assert preset("prctl-all").default == "prctl"
    assert preset("madvise-heap").rules[0].kinds == ("heap",)
    assert all(p.preset for p in PRESETS.values())
    with pytest.raises(PolicyError, match="no preset named 'all'"):
        preset("all")


def test_summary_lists_rules() -> None:
    text = parse_policies(GOOD)[0].summary()
    assert (
        "web workers: comm=gunicorn.* cgroup=/system.slice/web-*.service root=false -> prctl"
        in text
    )
    assert "kinds=heap,anon" in text
    assert "domain=batch" in text
    assert "otherwise: off" in text


def test_the_documented_example_parses() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "policies.md").read_text()
    block = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert block is not None
    sets = parse_policies(block.group(1), source="docs/policies.md")
    assert [s.name for s in sets] == ["web-workers", "everything"]
    assert sets[0].rules[1].match.root is False

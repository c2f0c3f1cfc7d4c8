"""The host facts outputs record (planner/provenance.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.provenance import HostInfo, cpu_generation, cpu_identity

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 106
model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz
stepping\t: 6

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Other
"""

ARM = """processor\t: 0
BogoMIPS\t: 50.00
CPU implementer\t: 0x41

Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


@pytest.mark.parametrize(
    ("text", "identity", "generation"),
    [
        # the first processor's block: a VM's model name says no generation, family and
        # model do
        (X86, "Intel(R) Xeon(R) Processor @ 2.80GHz (family 6, model 106)", (6, 106)),
        (ARM, "Raspberry Pi 4 Model B Rev 1.4", None),  # ARM names the machine after the CPUs
        ("cpu family\t: 6\nmodel\t\t: 85\n", "(family 6, model 85)", (6, 85)),
        ("model name\t: Some CPU\nmodel\t\t: x\n", "Some CPU", None),
        ("", None, None),
    ],
)
def test_the_cpu_is_named_with_its_generation(
    tmp_path: Path, text: str, identity: str | None, generation: tuple[int, int] | None
) -> None:
    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_identity(tmp_path) == identity
    assert cpu_generation(identity) == generation


def test_an_unreadable_cpuinfo_names_no_cpu(tmp_path: Path) -> None:
    assert cpu_identity(tmp_path) is None
    assert cpu_generation(None) is None


def test_the_host_facts_of_a_recording_name_the_cpu() -> None:
    # observe, run and validate record HostInfo: the CPU with its generation, as a capture
    facts = HostInfo.collect().to_dict()
    assert facts["cpu"] == cpu_identity()

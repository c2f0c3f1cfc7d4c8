"""Run a command on a kernel that has soft-dirty tracking: a Debian 6.12 guest under QEMU.

Used for docs/live-validation.md, "Soft-dirty on a real kernel". The machines this project
is developed on run a kernel built without ``CONFIG_MEM_SOFT_DIRTY``, so the capture's
soft-dirty path (``planner/capture/softdirty.py``) is tested there on a fake ``/proc`` only.
Debian's stock kernels have it (and KSM, ``PR_SET_MEMORY_MERGE`` and smart scan from 6.12),
so this script boots one as a guest that sees the host's own files:

* the root file system is the host's ``/``, read-only over virtio-9p, with a tmpfs overlay
  for the guest's writes (the repository, its ``.venv``, PostgreSQL, Node and gcc are the
  host's own: nothing is installed in the guest);
* ``--share DIR`` (read-write, at ``/vmshare`` in the guest) receives what the command
  writes there, e.g. a live run directory;
* the command runs as root, its output goes to ``DIR/guest.out`` and the guest powers off.

``build`` fetches the kernel package and a static busybox with ``apt-get download`` (Debian
bookworm's ``linux-image-6.12.*-amd64``: KSM, soft-dirty, no idle page tracking) and makes a
small initramfs that loads the 9p and overlay modules and switches to the host's root.

KVM is used with ``--kvm`` where nested virtualization works. Where it does not (the VMs of
2026-12-06: ``KVM internal error ... emulation failure`` in the kernel's decompressor), QEMU
emulates the CPU (TCG): the guest's code runs roughly 5-10 times slower, so figures of time
and CPU measured inside (ksmd's cost per page, the capture's duration) are the emulator's,
not a real host's. What a page does -- whether a write sets its soft-dirty bit, whether
ksmd merges it and a write breaks the merge -- is the kernel's own.

Run from the repository root (root, ``apt-get install qemu-system-x86 cpio``)::

    .venv/bin/python docs/measure/softdirty_guest.py build --work /var/tmp/sdvm
    .venv/bin/python docs/measure/softdirty_guest.py run --work /var/tmp/sdvm \\
        --share /var/tmp/sdshare -- /work/main/.venv/bin/python tools/live_validate.py \\
        --workload churn-rewrite --sample-ms 100 --capture-cpu-budget 0 --record-only \\
        --out /vmshare/runs

then score the recorded runs on the host: ``tools/live_validate.py --compare-only
/var/tmp/sdshare/runs/churn-rewrite-1``.
"""

from __future__ import annotations

import argparse
import fnmatch
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_PACKAGE = "linux-image-6.12.*+deb12-amd64"
MODULES = ("fs/netfs/netfs", "net/9p/9pnet", "net/9p/9pnet_virtio", "fs/9p/9p",
           "fs/overlayfs/overlay")  # fmt: skip
GUEST_DIR = "/vmshare"
#: The CPU QEMU emulates without KVM. Not ``max``: QEMU 7.2's emulation of AVX2 returns wrong
#: results to numpy (``np.unique`` of random integers came back unsorted in 19 of 25 checks,
#: and the capture failed on the frames it looked up); Nehalem has no AVX, and every check
#: passes.
TCG_CPU = "Nehalem"

INIT = """#!/bin/sh
# initramfs: the host's root over 9p (read-only) under a tmpfs overlay, then the command
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in netfs 9pnet 9pnet_virtio 9p overlay; do insmod /mods/$m.ko || echo "insmod $m failed"; done
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $o,ro,cache=loose hostroot /mnt/lower || { echo "9p root failed"; exec sh; }
mount -t tmpfs -o size=75% tmpfs /mnt/upper
mkdir -p /mnt/upper/u /mnt/upper/w
mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/upper/u,workdir=/mnt/upper/w \\
    /newroot || { echo "overlay failed"; exec sh; }
mkdir -p /newroot{guest_dir}
mount -t 9p -o $o share /newroot{guest_dir} || echo "share failed"
umount /proc /sys
mount -o move /dev /newroot/dev
exec switch_root /newroot {guest_dir}/.guest-init.sh
"""

GUEST_INIT = """#!/bin/sh
# in the host's root: the usual pseudo file systems, the command, power off
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
ip link set lo up 2>/dev/null
hostname softdirty-guest
cd {cwd}
echo "guest: $(uname -r), $(nproc) CPUs" > {guest_dir}/guest.out
{command} >> {guest_dir}/guest.out 2>&1
echo "guest: command exited $?" >> {guest_dir}/guest.out
sync
echo o > /proc/sysrq-trigger
sleep 10
"""


def build(work: Path) -> None:
    """The kernel, its modules and the initramfs under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    debs = work / "debs"
    debs.mkdir(exist_ok=True)
    names = subprocess.run(
        ["apt-cache", "pkgnames", "linux-image-6.12."], capture_output=True, text=True, check=True
    ).stdout.split()
    kernels = sorted(n for n in names if fnmatch.fnmatch(n, KERNEL_PACKAGE))
    if not kernels:
        sys.exit(f"softdirty_guest: no package {KERNEL_PACKAGE} (apt-get update first)")
    for pkg in (kernels[-1], "busybox-static"):
        subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
    root = work / "root"
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        _initramfs(root, Path(tmp), work / "initrd.gz")
    (vmlinuz,) = (root / "boot").glob("vmlinuz-*")
    print(f"softdirty_guest: {vmlinuz.name} and initrd.gz in {work}")


def _initramfs(root: Path, initrd: Path, out: Path) -> None:
    """busybox, the modules and ``INIT`` in ``initrd``, packed as ``out``."""
    for d in ("bin", "proc", "sys", "dev", "mnt/lower", "mnt/upper", "newroot", "mods"):
        (initrd / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "bin" / "busybox", initrd / "bin" / "busybox")
    for applet in ("sh", "mount", "umount", "insmod", "mkdir", "switch_root", "echo"):
        (initrd / "bin" / applet).symlink_to("busybox")
    (modules,) = (root / "lib" / "modules").iterdir()
    for m in MODULES:
        (initrd / "mods" / f"{Path(m).name}.ko").write_bytes(
            lzma.decompress((modules / "kernel" / f"{m}.ko.xz").read_bytes())
        )
    init = initrd / "init"
    init.write_text(INIT.replace("{guest_dir}", GUEST_DIR))
    init.chmod(0o755)
    files = subprocess.run(["find", "."], cwd=initrd, capture_output=True, check=True).stdout
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc"], cwd=initrd, input=files, capture_output=True, check=True
    ).stdout
    out.write_bytes(subprocess.run(
        ["gzip", "-1"], input=cpio, capture_output=True, check=True).stdout)  # fmt: skip


def run(work: Path, share: Path, command: list[str], *, cpus: int, mem: str, kvm: bool,
        timeout_s: float) -> int:  # fmt: skip
    """Boot the guest, run ``command`` in it (cwd: this one), power off; its exit status."""
    (vmlinuz,) = (work / "root" / "boot").glob("vmlinuz-*")
    share.mkdir(parents=True, exist_ok=True)
    init = share / ".guest-init.sh"
    text = GUEST_INIT.replace("{guest_dir}", GUEST_DIR).replace("{cwd}", shlex.quote(os.getcwd()))
    init.write_text(text.replace("{command}", shlex.join(command)))
    init.chmod(0o755)
    tcg = ["-accel", "tcg,thread=multi", "-cpu", TCG_CPU]
    accel = ["-enable-kvm", "-cpu", "host"] if kvm else tcg
    argv = [
        "qemu-system-x86_64", *accel, "-smp", str(cpus), "-m", mem,
        "-kernel", str(vmlinuz), "-initrd", str(work / "initrd.gz"),
        "-append", "console=ttyS0 quiet panic=-1 transparent_hugepage=madvise",
        "-fsdev", "local,id=r,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=r,mount_tag=hostroot",
        "-fsdev", f"local,id=s,path={share},security_model=none",
        "-device", "virtio-9p-pci,fsdev=s,mount_tag=share",
        "-nographic", "-no-reboot", "-serial", "mon:stdio", "-nic", "none",
    ]  # fmt: skip
    out = share / "guest.out"
    out.unlink(missing_ok=True)
    with open(work / "console.log", "wb") as console:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                       timeout=timeout_s, check=False)  # fmt: skip
    text = out.read_text() if out.exists() else ""
    sys.stdout.write(text)
    last = text.rstrip().rsplit("\n", 1)[-1]
    if not last.startswith("guest: command exited "):
        sys.stderr.write(f"softdirty_guest: the guest did not finish (see {work}/console.log)\n")
        return 1
    return int(last.rsplit(" ", 1)[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build", help="fetch the kernel and busybox, make the initramfs")
    b.add_argument("--work", type=Path, required=True)
    r = sub.add_parser("run", help="boot the guest and run a command in it")
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--share", type=Path, required=True, help=f"read-write, at {GUEST_DIR}")
    r.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    r.add_argument("--mem", default="6G")
    r.add_argument("--kvm", action="store_true", help="hardware virtualization (nested KVM)")
    r.add_argument("--timeout", type=float, default=3600.0, help="seconds")
    r.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    if a.what == "build":
        build(a.work)
        return 0
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("run: give the command after --")
    return run(a.work, a.share, cmd, cpus=a.cpus, mem=a.mem, kvm=a.kvm, timeout_s=a.timeout)


if __name__ == "__main__":
    sys.exit(main())

"""Boot ONE virtme-ng VM on the Debian kernel per pytest session and run guest.py in it.

The host kernel has no IPVS; the Debian kernel (``linux-image-amd64``) has the ip_vs
modules. ``vng --run /boot/vmlinuz-* --disable-kvm`` boots it under QEMU's TCG on this
machine's root filesystem (read-only, except the report directory passed with
``--rwdir``), runs tests/vm/guest.sh as root, and the checks write a JSON report that
the tests in this directory assert on, one test per check.

Nothing here skips: no kernel image, no vng, a VM that does not boot or a report that
is missing are failures, with the end of the VM's console output in the message.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLES

VM_TIMEOUT_S = 1500  # a TCG boot takes 20 s idle, two minutes on a loaded machine


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: tests in a VM kernel with real IPVS (virtme-ng)")


def _kernel() -> Path:
    def version(p: Path) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", p.name)]

    images = sorted(Path("/boot").glob("vmlinuz-*"), key=version)
    if not images:
        pytest.fail("no /boot/vmlinuz-* kernel image: install linux-image-amd64 (make apt)")
    return images[-1]


def _samples_dir() -> Path:
    if not SAMPLES:
        pytest.fail("the shared reference samples are missing (../shared/reference/samples)")
    return SAMPLES[0].parent


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no console log)"


@pytest.fixture(scope="session")
def vm_report() -> dict[str, dict]:
    bindir = Path(sys.executable).parent
    vng = bindir / "vng"
    if not vng.exists():
        pytest.fail(f"{vng} is missing: virtme-ng is a test dependency (pip install -e '.[test]')")
    (ROOT / "build").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vmtest-", dir=ROOT / "build"))
    report = work / "report.json"
    log = work / "console.log"
    guest = shlex.join(
        ["sh", str(ROOT / "tests/vm/guest.sh"), sys.executable, str(report), str(_samples_dir())]
    )
    argv = [
        str(vng),
        "--run",
        str(_kernel()),
        "--disable-kvm",
        "--memory",
        "2G",
        "--rwdir",
        str(work),
        "--exec",
        guest,
    ]
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        with log.open("w") as out:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=VM_TIMEOUT_S,
                cwd=work,
            )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the VM did not finish in {VM_TIMEOUT_S} s; console:\n{_tail(log)}")
    if not report.exists():
        pytest.fail(
            f"the VM wrote no report (vng exit {proc.returncode}): {shlex.join(argv)}\n"
            f"console:\n{_tail(log)}"
        )
    results = json.loads(report.read_text())
    setup = results.get("setup")
    if setup is not None and not setup["ok"]:
        pytest.fail(f"VM setup failed: {setup['detail']}\nconsole:\n{_tail(log)}")
    results["_console"] = {"ok": True, "detail": str(log)}
    return results

"""Real IPVS in a VM kernel: one test per check that tests/vm/guest.py ran there.

What the checks are (see guest.py): every shared sample, examples/lvs.cf, the golden
configs and a generated config applied with ``lvs-router apply`` and compared with
``lvs-compile emit --target ipvsadm`` (then a second reconcile is empty); ``show``;
timeouts and the sync daemon; a chain of transitions with the exact operations and
the connection counters of every surviving service unchanged; netlink failures
midway, then a converging reconcile; real TCP and UDP connections from a client
namespace through IPVS to two real servers, NAT and direct routing, counted per
server against the wrr weights (traffic.py); then the daemon (`lvs-router run
--dataplane ipvs`) against the same kernel: a stopped real server leaves the table and
re-enters, reloads, a broken reload, SIGKILL and adoption, --on-stop remove
(guest_daemon.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SAMPLES
from tests.vm.guest import check_names

pytestmark = pytest.mark.vm

NAMES = check_names(SAMPLES[0].parent if SAMPLES else Path("missing-samples"))


@pytest.mark.parametrize("check", NAMES)
def test_in_vm(vm_report, check):
    result = vm_report.get(check)
    assert result is not None, (
        f"check {check!r} did not run in the VM (an earlier check failed hard?); "
        f"console log: {vm_report['_console']['detail']}"
    )
    assert result["ok"], result["detail"]

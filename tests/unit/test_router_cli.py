"""``lvs-router apply/show --dataplane ipvs`` without a kernel: dry runs, errors, help.

The kernel side is replaced by a stand-in that reports IPVS missing (as on a kernel
without ip_vs) or holds a given table; tests/vm runs the real thing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import dataplane.ipvs as ipvs
from dataplane.reconcile import IPVSState
from runtime.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "lvs.cf")

EXAMPLE_OPS = [
    "-A -t 198.18.0.10:80 -s wlc -p 300 -M 255.255.255.0",
    "-A -u 198.18.0.53:53 -s rr",
    "-a -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 100",
    "-a -t 198.18.0.10:80 -r 198.19.0.12:8080 -m -w 50",
    "-a -u 198.18.0.53:53 -r 198.18.0.21:53 -g -w 1",
    "-a -u 198.18.0.53:53 -r 198.18.0.22:53 -g -w 1",
    "--set 900 120 300",
    "--start-daemon master --mcast-interface eth1 --syncid 7",
]


class NoIPVS:
    def __init__(self) -> None:
        raise ipvs.IPVSUnavailable("this kernel has no IPVS (test stand-in)")


class FakeKernel:
    """Holds a state; ``apply`` must never be reached in a dry run."""

    state = IPVSState()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def read(self):
        return ipvs.KernelTable(self.state)

    def apply(self, ops):  # pragma: no cover - a dry run that applies is the failure
        raise AssertionError("dry run touched the kernel")


@pytest.fixture
def no_ipvs(monkeypatch):
    monkeypatch.setattr(ipvs, "IPVSKernel", NoIPVS)


def test_dry_run_without_ipvs_diffs_against_empty(no_ipvs, capsys):
    assert main(["apply", "--dataplane", "ipvs", "--dry-run", EXAMPLE]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == EXAMPLE_OPS
    assert "no IPVS" in err and "empty IPVS table" in err


def test_backup_role_starts_a_backup_daemon(no_ipvs, capsys):
    main(["apply", "--dataplane", "ipvs", "--dry-run", "--role", "backup", EXAMPLE])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "--start-daemon backup --mcast-interface eth1 --syncid 7"


def test_apply_without_ipvs_fails_loudly(no_ipvs, capsys):
    assert main(["apply", "--dataplane", "ipvs", EXAMPLE]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no IPVS" in err


def test_dry_run_against_a_table_changes_nothing(monkeypatch, capsys):
    from compiler import compile_file
    from dataplane.reconcile import desired_state

    FakeKernel.state = desired_state(compile_file(EXAMPLE).config)
    monkeypatch.setattr(ipvs, "IPVSKernel", FakeKernel)
    assert main(["apply", "--dataplane", "ipvs", "--dry-run", EXAMPLE]) == 0
    assert capsys.readouterr().out == ""


def test_config_errors_print_diagnostics_and_apply_nothing(no_ipvs, capsys):
    broken = str(ROOT / "examples" / "broken.cf")
    assert main(["apply", "--dataplane", "ipvs", "--dry-run", broken]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "error[LVS" in err and "nothing applied" in err


def test_missing_file_is_a_usage_error(no_ipvs, capsys, tmp_path):
    assert main(["apply", "--dataplane", "ipvs", str(tmp_path / "nope.cf")]) == 2


def test_show_without_ipvs_fails(no_ipvs, capsys):
    assert main(["show", "--dataplane", "ipvs"]) == 1
    assert "no IPVS" in capsys.readouterr().err


def test_show_ipvsadm_format_is_the_emitters(monkeypatch, capsys):
    from compiler import compile_file
    from compiler.emit.ipvsadm import emit
    from dataplane.reconcile import desired_state

    cfg = compile_file(EXAMPLE).config
    FakeKernel.state = desired_state(cfg)
    monkeypatch.setattr(ipvs, "IPVSKernel", FakeKernel)
    assert main(["show", "--dataplane", "ipvs", "--format", "ipvsadm"]) == 0
    assert capsys.readouterr().out == emit(cfg)
    assert main(["show", "--dataplane", "ipvs"]) == 0
    out = capsys.readouterr().out
    assert "198.19.0.12:8080" in out and "Masq" in out and "persistent 300" in out


@pytest.mark.parametrize("command", ["run", "reload", "status", "send-arp"])
def test_every_command_is_available(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    assert f"lvs-router {command}" in capsys.readouterr().out


def test_reload_without_a_daemon_is_a_clear_error(tmp_path, capsys):
    sock = tmp_path / "nobody.sock"
    assert main(["reload", "--socket", str(sock)]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the daemon" in err and str(sock) in err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out.lower()
    for command in ("run", "reload", "status", "send-arp", "apply", "show"):
        assert command in out
    assert "not available yet" not in out

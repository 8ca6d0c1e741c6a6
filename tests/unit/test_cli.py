"""lvs-compile's command line: exit statuses, formats, and an installed copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from compiler.cli import main
from tests.conftest import ROOT, SAMPLES

GOOD = str(ROOT / "examples" / "lvs.cf")


def write(tmp_path: Path, text: str, name: str = "lvs.cf") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.unit
def test_exit_0_on_clean_file(capsys):
    assert main(["check", GOOD]) == 0
    assert "0 errors" in capsys.readouterr().out


@pytest.mark.unit
def test_exit_1_on_errors_and_text_format(tmp_path, capsys):
    f = write(tmp_path, "primary = 10.0.0.1\nnetwork = DIRECT\n")
    assert main(["check", f]) == 1
    out = capsys.readouterr().out
    assert f"{f}:2:11: error[LVS103]:" in out
    assert "2 | network = DIRECT" in out
    assert "  |           ^^^^^^" in out
    assert "help: values are case-sensitive" in out


@pytest.mark.unit
def test_werror_turns_warnings_into_failure(tmp_path):
    f = write(tmp_path, "keepalive = 2\nkeepalive = 3\n")
    assert main(["check", f]) == 0
    assert main(["check", "--werror", f]) == 1


@pytest.mark.unit
def test_exit_2_on_usage_and_io(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing.cf")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["check", "--format", "xml", GOOD])
    assert e.value.code == 2


@pytest.mark.unit
def test_json_and_sarif_formats(tmp_path, capsys):
    f = write(tmp_path, "network = DIRECT\n")
    main(["check", "--format", "json", f])
    diags = json.loads(capsys.readouterr().out)
    assert diags[0]["code"] == "LVS103"
    assert (diags[0]["line"], diags[0]["column"]) == (1, 11)
    main(["check", "--format", "sarif", f])
    sarif = json.loads(capsys.readouterr().out)
    assert sarif["version"] == "2.1.0"
    result = sarif["runs"][0]["results"][0]
    assert result["ruleId"] == "LVS103"
    region = result["locations"][0]["physicalLocation"]["region"]
    assert (region["startLine"], region["startColumn"]) == (1, 11)
    rules = sarif["runs"][0]["tool"]["driver"]["rules"]
    assert rules[result["ruleIndex"]]["id"] == "LVS103"


@pytest.mark.unit
def test_emit_refuses_a_file_with_errors(tmp_path, capsys):
    f = write(tmp_path, "network = DIRECT\n")
    assert main(["emit", "--target", "json", f]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nothing emitted" in captured.err


@pytest.mark.unit
def test_emit_json_is_the_model(capsys):
    assert main(["emit", "--target", "json", GOOD]) == 0
    doc = json.loads(capsys.readouterr().out)
    www = doc["virtuals"][0]
    assert www["address"] == {"address": "198.18.0.10", "device": "eth0:1"}
    assert doc["nat_router"] == {"address": "198.19.0.1", "device": "eth1:1"}
    assert [s["port"] for s in www["servers"]] == [80, 8080, 80]
    assert doc["keepalive"] == 1 and doc["hard_shutdown"] is True


@pytest.mark.slow
def test_installed_non_editable_from_another_directory(tmp_path):
    """The grammar ships as package data: an installed lvs-compile finds it anywhere."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [str(py), "-c", "import grammars, compiler; print(grammars.__file__, compiler.__file__)"],
        cwd=elsewhere,
        env=clean_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ROOT) not in where and str(env_dir) in where
    sample = str(SAMPLES[0])
    r = subprocess.run(
        [str(env_dir / "bin" / "lvs-compile"), "check", "--dialect", "piranha", sample],
        cwd=elsewhere,
        env=clean_env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 errors" in r.stdout
    r = subprocess.run(
        [str(env_dir / "bin" / "lvs-router"), "--help"],
        cwd=elsewhere,
        env=clean_env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "send-arp" in r.stdout and "status" in r.stdout
    assert sys.executable  # the test ran under the project's interpreter

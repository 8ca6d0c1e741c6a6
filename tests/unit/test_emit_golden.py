"""Golden files: every emitter's output for the shared samples, examples/lvs.cf and
the extra cases in tests/golden/configs/, compared with the checked-in text.

The checked-in files are the reviewed truth; the ``.ipvsadm`` ones were checked by
hand against spec §4.3 and ipvsadm 1.31's ``ipvsadm-save -n`` format. After an
intended change, regenerate and review the diff::

    LVS_GOLDEN_UPDATE=1 .venv/bin/pytest tests/unit/test_emit_golden.py
    git diff tests/golden
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from compiler import Dialect, compile_file
from compiler.emit import emit
from tests.conftest import ROOT, SAMPLES

pytestmark = pytest.mark.golden

GOLDEN = ROOT / "tests" / "golden"
CONFIGS = GOLDEN / "configs"
SUFFIX = {"ipvsadm": ".ipvsadm", "json": ".json", "lvs.cf": ".lvscf"}
UPDATE = os.environ.get("LVS_GOLDEN_UPDATE") == "1"


def _cases() -> list[tuple[str, Path, Path]]:
    """(case id, input file, golden path without suffix)."""
    cases = [(p.stem, p, GOLDEN / p.stem) for p in SAMPLES]
    cases.append(("examples-lvs", ROOT / "examples" / "lvs.cf", GOLDEN / "examples-lvs"))
    cases += [(f"configs/{p.stem}", p, CONFIGS / p.stem) for p in sorted(CONFIGS.glob("*.cf"))]
    return cases


CASES = _cases()


@pytest.mark.parametrize("target", sorted(SUFFIX))
@pytest.mark.parametrize(("case", "source", "stem"), CASES, ids=[c[0] for c in CASES])
def test_golden(case, source, stem, target):
    result = compile_file(str(source), Dialect.EXTENDED)
    assert result.ok, [f"{d.span}: {d.message}" for d in result.errors]
    text = emit(target, result.config)
    path = stem.with_name(stem.name + SUFFIX[target])
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"no golden file {path.relative_to(ROOT)}; run with LVS_GOLDEN_UPDATE=1"
    assert text == path.read_text(), f"{path.relative_to(ROOT)} differs"


def test_every_golden_file_has_an_input():
    expected = {stem.with_name(stem.name + sfx) for _, _, stem in CASES for sfx in SUFFIX.values()}
    present = {p for p in GOLDEN.rglob("*") if p.is_file() and p.suffix != ".cf"}
    assert present <= expected, sorted(str(p.relative_to(ROOT)) for p in present - expected)


def test_the_extra_configs_cover_what_they_should():
    names = {p.stem for p in CONFIGS.glob("*.cf")}
    assert {
        "fwmark-merge",
        "udp-nat",
        "tunnel",
        "persistence",
        "ipv6-extended",
        "per-virtual-network",
    } <= names

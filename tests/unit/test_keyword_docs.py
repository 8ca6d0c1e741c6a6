"""The three descriptions of the vocabulary agree: keyword table, grammar, docs, model."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from compiler.keywords import GLOBAL, SERVER, VIRTUAL, terminal_name
from compiler.model import Config, RealServer, VirtualService
from grammars import grammar_text
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

DOC = (ROOT / "docs" / "lvs.cf.md").read_text()


def _doc_section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end > 0 else None]


@pytest.mark.parametrize(
    ("table", "title"),
    [(GLOBAL, "## Global keywords"), (VIRTUAL, "## `virtual NAME"), (SERVER, "## `server NAME")],
)
def test_every_keyword_documented_in_its_section(table, title):
    section = _doc_section(title)
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert documented == set(table)


@pytest.mark.parametrize(
    ("table", "rule"),
    [(GLOBAL, "global_stmt"), (VIRTUAL, "service_stmt"), (SERVER, "server_stmt")],
)
def test_grammar_accepts_exactly_the_table(table, rule):
    text = grammar_text()
    body = re.search(rf"^\?{rule}:(.*?)(?=^\S|\Z)", text, re.M | re.S).group(1)
    assert set(re.findall(r"K_[A-Z_]+", body)) == {terminal_name(k) for k in table}


@pytest.mark.parametrize(
    ("table", "cls", "extra"),
    [
        (GLOBAL, Config, {"virtuals", "failovers", "file", "spans"}),
        (
            VIRTUAL,
            VirtualService,
            {"name", "device", "single_quoted", "servers", "span", "spans", "pmask6"},
        ),
        (SERVER, RealServer, {"name", "span", "spans"}),
    ],
)
def test_model_fields_are_the_keywords(table, cls, extra):
    assert {f.name for f in fields(cls)} == set(table) | extra

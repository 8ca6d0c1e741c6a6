"""Every shared sample gets piranha 0.8.6's verdict (spec §2: all of them parse).

The piranha 0.5 verdicts are in test_dialects.py.
"""

from __future__ import annotations

import pytest

from compiler import Dialect, compile_file
from tests.conftest import SAMPLES


@pytest.mark.unit
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name[:2])
@pytest.mark.parametrize("dialect", [Dialect.PIRANHA, Dialect.EXTENDED], ids=lambda d: d.value)
def test_sample_accepted(path, dialect):
    result = compile_file(str(path), dialect)
    assert result.ok, [d.message for d in result.errors]


@pytest.mark.unit
def test_server_takes_virtual_port_at_block_start():
    from compiler import compile_text

    text = "virtual v {\n active = 1\n port = 80\n server a {\n }\n port = 443\n}\n"
    vs = compile_text("t.cf", text).config.virtuals[0]
    assert vs.port == 443
    assert vs.servers[0].port == 80

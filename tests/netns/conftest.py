"""The ``topology`` fixture: a Topology removed after the test, whatever happened."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netns.topo import Topology


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    with Topology(request.node.name) as t:
        yield t

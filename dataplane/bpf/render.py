"""Render the XDP program's C text from a :class:`dataplane.plan.Plan` (pure)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

from ..plan import Plan, Sizes

HERE = Path(__file__).resolve().parent
HEADERS = (
    "lb_consts.h",
    "lb_structs.h",
    "lb_maps.h",
    "parsing.h",
    "scheduling.h",
    "conntrack.h",
    "encap.h",
    "nat.h",
    "ipv6_maps.h",
    "scheduling6.h",
    "ipv6.h",
    "nat6.h",
)
# conntrack.h is a template: the IPv4 table, and (feature ipv6) the IPv6 one, from one
# source (key words loaded into registers and compared one by one)
CONNTRACK = {
    "conntrack.h": {"ct": "ct", "set": "ct_set", "key": "flow_key", "word": "__u32", "words": 4},
    "conntrack6": {"ct": "ct6", "set": "ct6_set", "key": "flow_key6", "word": "__u64", "words": 5},
}
PIN_DIR = "/sys/fs/bpf/lvs-router"
CT_WAYS = 8  # flows per set of the connection table (conntrack.h)


def ct_sets(sizes: Sizes) -> int:
    """Sets of the connection table (conntrack, nat_rev): the smallest power of two
    that gives at least ``sizes.ct_size`` flows at CT_WAYS per set (a flow's set is
    its hash's low bits)."""
    need = max(1, -(-sizes.ct_size // CT_WAYS))
    return 1 << (need - 1).bit_length()


def svc_hints(sizes: Sizes) -> int:
    """Slots of service_hints: a power of two >= 16 per service, so that few
    services share a slot (those that do fall back to the services hash)."""
    return 1 << (16 * sizes.max_services - 1).bit_length()


def defines(sizes: Sizes) -> list[tuple[str, int]]:
    """Every size the program is compiled with: the plan's, and the table geometry
    derived from them (maps.shapes uses the same functions)."""
    return [
        *sizes.defines(),
        ("CT_WAYS", CT_WAYS),
        ("CT_SETS", ct_sets(sizes)),
        ("SVC_HINTS", svc_hints(sizes)),
    ]


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


@cache
def _template() -> jinja2.Template:
    return _env().get_template("lb.bpf.c.j2")


@cache
def _headers() -> dict[str, str]:
    out = {name: (HERE / name).read_text() for name in HEADERS if name != "conntrack.h"}
    for name, args in CONNTRACK.items():
        out[name] = _env().get_template("conntrack.h").render(**args)
    return out


def render(
    plan: Plan,
    *,
    pin_dir: str | None = None,
    source: str | None = None,
    features: frozenset[str] | None = None,
) -> str:
    """The program for ``plan``: its sizes and features (or ``features``, to build one
    program that serves several plans), maps pinned under ``pin_dir`` if given."""
    return _template().render(
        sizes=defines(plan.sizes),
        features=sorted(plan.features if features is None else features),
        pin_dir=pin_dir,
        source=source,
        headers=_headers(),
    )

"""``--target json``: the model as JSON, keyed by lvs.cf keyword names.

Every keyword is present with its effective value (defaults filled in, unset ones
``null``), so tools can consume a config without knowing piranha's defaults.
``address = IP DEV`` and ``nat_router = IP DEV`` become ``{"address", "device"}``.
"""

from __future__ import annotations

import json
from dataclasses import fields
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from ..keywords import GLOBAL, SERVER, VIRTUAL
from ..model import Config, HostDevice, Hostname, RealServer, VirtualService

_NOT_KEYWORDS = {"span", "spans", "file", "single_quoted", "device"}


def _value(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, int | str):
        return v
    if isinstance(v, float):
        return int(v) if v.is_integer() else v
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, IPv4Address | IPv6Address | Hostname):
        return str(v)
    if isinstance(v, HostDevice):
        return {"address": str(v.address), "device": v.device}
    if isinstance(v, tuple):
        return [_value(x) for x in v]
    raise TypeError(f"no JSON form for {type(v).__name__}")


def _keywords(obj: Any, order: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = [f.name for f in fields(obj)]
    for name in ["name", *order]:
        if name not in names or name in out:
            continue
        out[name] = _value(getattr(obj, name))
    return out


def server_dict(rs: RealServer) -> dict[str, Any]:
    return _keywords(rs, SERVER)


def service_dict(vs: VirtualService, config: Config) -> dict[str, Any]:
    d = _keywords(vs, VIRTUAL)
    d["network"] = config.forwarding(vs).value
    if vs.address is None:
        d["address"] = None
    else:
        d["address"] = {"address": str(vs.address), "device": vs.device}
    if vs.pmask6 is not None:
        d["pmask"] = vs.pmask6  # an IPv6 virtual's persistence prefix length
    d["servers"] = [server_dict(s) for s in vs.servers]
    return d


def config_dict(config: Config) -> dict[str, Any]:
    d = _keywords(config, GLOBAL)
    d["virtuals"] = [service_dict(v, config) for v in config.virtuals]
    d["failovers"] = [service_dict(f, config) for f in config.failovers]
    return d


def emit(config: Config) -> str:
    return json.dumps(config_dict(config), indent=2) + "\n"

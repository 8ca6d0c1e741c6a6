"""``--target xdp`` (the rendered XDP C program) and ``--target xdp-maps`` (the
initial map contents as JSON). Pure: rendering needs jinja2 and the Maglev code,
not bcc, root or a kernel.

The XDP planning lives in :mod:`dataplane.plan` (the loader uses the same object),
imported here lazily so that the other emitters do not load numpy.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..model import Config
from . import EmitError


def _plan(config: Config, target: str):
    from dataplane.plan import PlanError, plan

    try:
        return plan(config, ipv6=True)
    except PlanError as err:
        raise EmitError(target, err.message, err.span, err.help) from None


def emit_c(config: Config) -> str:
    from dataplane.bpf.render import PIN_DIR, render

    return render(_plan(config, "xdp"), pin_dir=PIN_DIR, source=config.file or None)


def notes(config: Config) -> list[str]:
    """What the XDP dataplane does differently from IPVS for this config, one
    ``FILE:LINE:COL: note: ...`` line each (fwmark services matched as every port of
    their VIP, approximated schedulers, ignored real-server ports). These are notes of
    the target, not of the file, so they are not diagnostics of ``lvs-compile check``."""
    from dataplane.plan import PlanError, plan

    try:
        return [n.render() for n in plan(config, ipv6=True).notes]
    except PlanError:
        return []  # the emitter itself reports it, with its line


def _flag_names(flags: int, names: dict[int, str]) -> list[str]:
    return [name for bit, name in names.items() if flags & bit]


def emit_maps(config: Config) -> str:
    from dataplane import maglev
    from dataplane import plan as P

    plan = _plan(config, "xdp-maps")
    svc_flags = {
        P.SVC_F_TUNNEL: "tunnel",
        P.SVC_F_PERSIST: "persistent",
        P.SVC_F_HASH_SRC: "hash-source",
        P.SVC_F_HASH_DST: "hash-destination",
        P.SVC_F_NAT: "nat",
    }
    # the least-connection kind in bits 5-7 of the flags (lb_consts.h SVC_LC_*)
    lc_kinds = {1: "lc", 2: "wlc", 3: "sed", 4: "nq", 5: "lblc"}
    services: list[dict[str, Any]] = []
    rings: list[dict[str, Any]] = []
    for svc in plan.services:
        services.append(
            {
                "key": {"vip": str(svc.vip), "port": svc.port, "proto": svc.proto},
                "value": {
                    "index": svc.index,
                    "flags": _flag_names(svc.flags, svc_flags),
                    "least_connection": lc_kinds.get(svc.flags >> P.SVC_LC_SHIFT & 7),
                    "persist_s": svc.persist_s,
                    # services6 holds the persistence prefix length in this field
                    "pmask": f"/{svc.pmask6}" if svc.vip.version == 6 else str(svc.pmask),
                },
                "virtual": svc.name,
                "scheduler": svc.scheduler.value,
                "hash": svc.hash_by,
            }
        )
        members = svc.members()
        table = maglev.build(members, plan.sizes.ring_size)
        counts = maglev.shares(table, len(members))
        ids = [r.index for r in svc.reals] + [0]
        real_ids = [ids[i] for i in table.tolist()]
        rings.append(
            {
                "service": svc.index,
                "size": plan.sizes.ring_size,
                "slots": {r.key: int(c) for r, c in zip(svc.reals, counts, strict=True)},
                "sha256": hashlib.sha256(
                    b"".join(i.to_bytes(4, "little") for i in real_ids)
                ).hexdigest(),
            }
        )
    vips: dict[tuple[str, int], int] = {}
    for svc in plan.services:
        vips[(str(svc.vip), svc.proto)] = vips.get((str(svc.vip), svc.proto), 0) + 1
    doc = {
        "sizes": dict(plan.sizes.defines()),
        "features": sorted(plan.features),
        "notes": [str(n) for n in plan.notes],
        "services": services,
        "vips": [{"vip": v, "proto": p, "services": n} for (v, p), n in vips.items()],
        "reals": [
            {
                "index": r.index,
                "virtual": svc.name,
                "server": r.name,
                "addr": str(r.address),
                "port": r.port,
                "weight": r.weight,
                "mac": None,  # the next hop's MAC is found when the program is applied
                "flags": ["quiesced"] if r.weight == 0 else [],
            }
            for svc in plan.services
            for r in svc.reals
        ],
        "rings": rings,
        "globals": {"tunnel_src": "172.16.0.0", "tunnel_src_vary_bits": 16},
    }
    return json.dumps(doc, indent=2) + "\n"

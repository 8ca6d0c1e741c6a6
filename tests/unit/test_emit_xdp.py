"""``lvs-compile emit --target xdp`` / ``xdp-maps``: pure, no bcc needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler import compile_file, compile_text
from compiler.emit import emit
from dataplane.plan import plan

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_maps_json_describes_every_service_and_table() -> None:
    config = compile_file(str(ROOT / "tests/bpf/lb.cf")).config
    doc = json.loads(emit("xdp-maps", config))
    assert [s["virtual"] for s in doc["services"]] == [
        "web", "dns", "srchash", "dsthash", "sticky", "marked"
    ]  # fmt: skip
    sticky = doc["services"][4]
    assert sticky["key"] == {"vip": "198.18.0.12", "port": 0, "proto": 6}
    assert sticky["value"]["flags"] == ["persistent"]
    assert sticky["value"]["pmask"] == "255.255.255.0"
    assert (
        doc["services"][5]["key"]["port"] == 0 and "tunnel" in doc["services"][5]["value"]["flags"]
    )
    web = doc["rings"][0]
    assert sum(web["slots"].values()) == 65537
    assert web["slots"]["198.18.1.3:80"] == pytest.approx(65537 / 2, rel=0.01)
    assert "fwmark 1 is matched as every tcp port of 198.18.0.13" in doc["notes"][0]
    assert {"vip": "198.18.0.10", "proto": 6, "services": 1} in doc["vips"]


def test_c_program_has_the_features_and_pins() -> None:
    config = compile_file(str(ROOT / "tests/bpf/lb.cf")).config
    text = emit("xdp", config)
    assert "Features compiled in: any-port, dh, direct, persistence, sh, tunnel." in text
    assert '"/sys/fs/bpf/lvs-router/" #name' in text
    assert "LB_INLINE bool feature_tunnel(void) { return 1; }" in text


def test_direct_only_config_leaves_tunnel_out() -> None:
    cf = "network = direct\nvirtual v {\n active = 1\n address = 198.18.0.1 eth0:1\n"
    cf += " scheduler = rr\n server s {\n  address = 198.18.1.1\n  active = 1\n }\n}\n"
    text = emit("xdp", compile_text("d.cf", cf).config)
    assert "feature_tunnel(void) { return 0; }" in text
    assert "feature_persist(void) { return 0; }" in text
    assert "feature_any_port(void) { return 0; }" in text


def test_nat_is_emitted_with_its_flag_and_feature() -> None:
    cf = "network = nat\nvirtual v {\n active = 1\n address = 198.18.0.1 eth0:1\n}\n"
    out = json.loads(emit("xdp-maps", compile_text("n.cf", cf).config))
    assert out["features"] == ["lc", "nat"]  # lvs.cf's default scheduler is wlc
    assert out["services"][0]["value"]["flags"] == ["nat"]
    assert out["services"][0]["value"]["least_connection"] == "wlc"


@pytest.mark.parametrize(
    ("scheduler", "kind"),
    [("lc", "lc"), ("wlc", "wlc"), ("sed", "sed"), ("nq", "nq"), ("lblcr", "lblc"), ("wrr", None)],
)
def test_maps_json_names_the_least_connection_kind(scheduler: str, kind: str | None) -> None:
    """The kind the program reads from the service's flags, named in xdp-maps."""
    cf = "network = direct\nvirtual v {\n active = 1\n address = 198.18.0.1 eth0:1\n"
    cf += f" scheduler = {scheduler}\n server s {{\n  address = 198.18.1.1\n  active = 1\n }}\n}}\n"
    out = json.loads(emit("xdp-maps", compile_text("k.cf", cf).config))
    assert out["services"][0]["value"]["least_connection"] == kind
    assert ("lc" in out["features"]) == (kind is not None)


def test_emit_xdp_prints_target_notes_with_their_lvs_cf_position(capsys) -> None:
    """fwmark services are matched as every port of their VIP: the compiler says so,
    at the fwmark line, when compiling for XDP (and only then)."""
    from compiler.cli import main

    cf = str(ROOT / "tests/bpf/lb.cf")
    lines = (ROOT / "tests/bpf/lb.cf").read_text().splitlines()
    fwmark_line = next(i for i, t in enumerate(lines, 1) if t.strip().startswith("fwmark"))
    for target in ("xdp", "xdp-maps"):
        assert main(["emit", "--target", target, cf]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("/*" if target == "xdp" else "{")
        assert (
            f"{cf}:{fwmark_line}:5: note: virtual marked: fwmark 1 is matched as every tcp "
            "port of 198.18.0.13 by the XDP dataplane" in err
        )
    assert main(["check", cf]) == 0
    assert "fwmark 1 is matched" not in "".join(capsys.readouterr())
    assert main(["emit", "--target", "ipvsadm", cf]) == 0
    assert capsys.readouterr().err == ""


def test_approximated_scheduler_note_points_at_the_scheduler_line() -> None:
    cf = "network = direct\nvirtual v {\n active = 1\n address = 198.18.0.1 eth0:1\n"
    cf += " port = 80\n scheduler = wlc\n server s {\n  address = 198.18.1.1\n  active = 1\n"
    cf += " }\n}\n"
    notes = plan(compile_text("w.cf", cf).config).notes
    assert [str(n.span) for n in notes] == ["w.cf:6:2"]
    assert "scheduler wlc picks the less loaded of two servers" in notes[0].message
    assert notes[0].render().startswith("w.cf:6:2: note: virtual v: scheduler wlc")


def test_fwmark_note_at_each_virtual_sharing_the_mark() -> None:
    block = (
        "virtual {name} {{\n active = 1\n address = 198.18.0.1 eth0:1\n port = {port}\n"
        " fwmark = 7\n scheduler = wrr\n server s {{\n  address = 198.18.1.1\n"
        "  active = 1\n }}\n}}\n"
    )
    cf = "network = direct\n" + block.format(name="a", port=80) + block.format(name="b", port=443)
    notes = [n for n in plan(compile_text("m.cf", cf).config).notes if "fwmark" in n.message]
    assert [str(n.span) for n in notes] == ["m.cf:6:2", "m.cf:17:2"]
    assert all("virtual a and b: fwmark 7 is matched as every tcp port" in n.message for n in notes)


V6 = (
    "network = {net}\nvirtual v6 {{\n active = 1\n address = 2001:2::10 eth0\n port = 80\n"
    " scheduler = {sched}\n{extra} server s {{\n  address = {rip}\n  active = 1\n }}\n}}\n"
)


def _v6(net="direct", sched="wrr", extra="", rip="2001:2:1::1"):
    return compile_text("v6.cf", V6.format(net=net, sched=sched, extra=extra, rip=rip)).config


def test_ipv6_direct_routing_is_compiled_in_with_its_own_path() -> None:
    text = emit("xdp", _v6())
    assert "LB_INLINE bool feature_ipv6(void) { return 1; }" in text
    assert "LB_INLINE int lb_ingress6(struct xdp_md *ctx)" in text
    assert "ct6_find(struct ct6_set *b, const struct flow_key6 *k" in text
    doc = json.loads(emit("xdp-maps", _v6()))
    assert doc["features"] == ["direct", "ipv6"]
    assert doc["services"][0]["key"] == {"vip": "2001:2::10", "port": 80, "proto": 6}
    # an IPv4-only program has no trace of it
    v4 = emit("xdp", compile_file(str(ROOT / "tests/bpf/lb.cf")).config)
    assert "feature_ipv6(void) { return 0; }" in v4 and "conntrack6" not in v4


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"rip": "198.18.1.1"}, "server s 198.18.1.1 is not IPv6 like the VIP"),
    ],
)
def test_what_ipv6_does_not_do_yet_is_refused_at_its_line(kw: dict, words: str) -> None:
    from dataplane.plan import PlanError

    with pytest.raises(PlanError, match=words) as err:
        plan(_v6(**kw), ipv6=True)
    assert err.value.span is not None


@pytest.mark.parametrize(
    ("kw", "flags", "lc", "features"),
    [
        ({"sched": "wlc"}, [], "wlc", {"lc"}),
        ({"sched": "lc"}, [], "lc", {"lc"}),
        ({"sched": "sh"}, ["hash-source"], None, {"sh"}),
        ({"sched": "dh"}, ["hash-destination"], None, {"dh"}),
        ({"sched": "lblcr"}, ["hash-destination"], "lblc", {"dh", "lc"}),
        ({"extra": " persistent = 60\n pmask = 64\n"}, ["persistent"], None, {"persistence"}),
    ],
)
def test_ipv6_schedules_as_ipv4(kw: dict, flags: list, lc: str | None, features: set) -> None:
    doc = json.loads(emit("xdp-maps", _v6(**kw)))
    value = doc["services"][0]["value"]
    assert value["flags"] == flags and value["least_connection"] == lc
    assert set(doc["features"]) == {"direct", "ipv6"} | features


def test_xdp_maps_shows_the_ipv6_prefix_length() -> None:
    doc = json.loads(emit("xdp-maps", _v6(extra=" persistent = 60\n pmask = /56\n")))
    assert doc["services"][0]["value"]["pmask"] == "/56"
    p = plan(_v6(extra=" persistent = 60\n"), ipv6=True)
    assert p.services[0].pmask6 == 128  # unset: one client address, as IPVS


def test_ipv6_tunnel_is_planned_with_its_flag() -> None:
    doc = json.loads(emit("xdp-maps", _v6(net="tunnel")))
    assert doc["features"] == ["ipv6", "tunnel"]
    assert doc["services"][0]["value"]["flags"] == ["tunnel"]


def test_the_daemons_plan_refuses_ipv6_at_the_address_line() -> None:
    from dataplane.plan import PlanError

    with pytest.raises(PlanError, match="address 2001:2::10 is IPv6") as err:
        plan(_v6())
    assert err.value.span is not None and err.value.span.line == 4

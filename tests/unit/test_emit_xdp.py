"""``lvs-compile emit --target xdp`` / ``xdp-maps``: pure, no bcc needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler import compile_file, compile_text
from compiler.emit import EmitError, emit

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
    assert "Features compiled in: dh, direct, persistence, sh, tunnel." in text
    assert '"/sys/fs/bpf/lvs-router/" #name' in text
    assert "LB_INLINE bool feature_tunnel(void) { return 1; }" in text


def test_direct_only_config_leaves_tunnel_out() -> None:
    cf = "network = direct\nvirtual v {\n active = 1\n address = 198.18.0.1 eth0:1\n"
    cf += " scheduler = rr\n server s {\n  address = 198.18.1.1\n  active = 1\n }\n}\n"
    text = emit("xdp", compile_text("d.cf", cf).config)
    assert "feature_tunnel(void) { return 0; }" in text
    assert "feature_persist(void) { return 0; }" in text


def test_nat_is_refused_with_the_line() -> None:
    cf = "network = nat\nvirtual v {\n active = 1\n address = 198.18.0.1 eth0:1\n}\n"
    with pytest.raises(EmitError, match="network = nat is not supported") as err:
        emit("xdp-maps", compile_text("n.cf", cf).config)
    assert err.value.span is not None

"""The lvs.cf emitter: layout, defaults, and the quoting rules piranha's tokenizer imposes."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from compiler import Dialect, Source, compile_source, compile_text
from compiler.emit import EmitError, emit
from compiler.emit.lvscf import word
from compiler.model import Config, RealServer, VirtualService

pytestmark = pytest.mark.unit


def parse(text: str, dialect: Dialect = Dialect.EXTENDED) -> Config:
    r = compile_source(Source("t.cf", text), dialect, run_checks=False)
    assert not r.errors, [f"{d.span}: {d.message}" for d in r.errors] + [text]
    return r.config


def fmt(model: Config) -> str:
    return emit("lvs.cf", model)


def roundtrip(model: Config) -> str:
    text = fmt(model)
    assert parse(text) == model, text
    return text


def test_gui_layout():
    text = fmt(
        parse(
            "network = direct\nprimary = 10.0.0.1\n"
            "virtual web {\n\tport = 8080\n\tactive = 1\n\taddress = 10.0.0.10 eth0:1\n"
            "\tserver a {\n\tweight = 3\n\taddress = 10.0.1.1\n\tactive = 1\n\t}\n}\n"
        )
    )
    assert text == (
        "primary = 10.0.0.1\n"
        "network = direct\n"
        "virtual web {\n"
        "     active = 1\n"
        "     address = 10.0.0.10 eth0:1\n"
        "     port = 8080\n"
        "     server a {\n"
        "         address = 10.0.1.1\n"
        "         active = 1\n"
        "         weight = 3\n"
        "     }\n"
        "}\n"
    )


def test_defaults_are_left_out_but_active_is_always_written():
    text = fmt(parse("virtual v {\n port = 80\n scheduler = wlc\n server s {\n }\n}\n"))
    assert text == "virtual v {\n     active = 0\n     server s {\n         active = 0\n     }\n}\n"
    # piranha refuses an empty file: the all-defaults model is a comment
    assert fmt(Config()) == "# every setting has its default value\n"
    assert parse(fmt(Config())) == Config()


def test_server_port_is_explicit_when_it_differs():
    # piranha's trap: a `port` after the server blocks does not reach the servers
    model = parse("virtual v {\n port = 80\n server a {\n }\n port = 443\n}\n")
    assert model.virtuals[0].servers[0].port == 80
    text = roundtrip(model)
    assert text.index("     port = 443") < text.index("server a")
    assert "         port = 80\n" in text


def test_private_addresses_follow_piranhas_copy_rule():
    copied = parse("primary = 10.0.0.1\nbackup = 10.0.0.2\n")
    assert copied.primary_private == copied.primary
    assert "private" not in roundtrip(copied)
    explicit = parse("primary = 10.0.0.1\nbackup = 10.0.0.2\nprimary_private = 10.0.0.1\n")
    assert explicit.backup_private is None  # no copy once primary_private is given
    assert "primary_private = 10.0.0.1" in roundtrip(explicit)
    with pytest.raises(EmitError, match="primary_private"):
        fmt(Config(primary=IPv4Address("10.0.0.1")))


@pytest.mark.parametrize(
    ("value", "last", "text"),
    [
        ("eth0:1", True, "eth0:1"),
        ("a b", True, '"a b"'),
        ("", True, '""'),
        ('say "hi"', True, "'say \"hi\"'"),
        ("it's", True, "it's"),  # a quote inside a word needs no quoting
        ("'x", True, '"\'x"'),  # a leading quote does
        ("a\tb", False, '"a\tb"'),  # blanks inside: fine before other words too
    ],
)
def test_word_quoting(value, last, text):
    assert word(value, last=last, what="v") == text


@pytest.mark.parametrize(
    ("value", "last"),
    [
        ("a \"b' c", True),  # both quote kinds and a blank
        ("", False),  # `""` followed by more words is a quote mismatch to piranha
        ("'x", False),
    ],
)
def test_word_that_cannot_be_written(value, last):
    with pytest.raises(EmitError):
        word(value, last=last, what="v")


@pytest.mark.parametrize(
    ("line", "written"),
    [
        ('send = "GET / HTTP/1.0\\r\\n\\r\\n"', 'send = "GET / HTTP/1.0\\r\\n\\r\\n"'),
        ("send = 'GET / HTTP/1.0'", "send = 'GET / HTTP/1.0'"),  # nanny gets the quotes
        ("expect = 'say \"hi\"'", "expect = 'say \"hi\"'"),
        ("expect = HTTP", 'expect = "HTTP"'),  # unquoted = double-quoted
        ('expect = a"b', 'expect = a"b'),  # cannot double-quote: bare keeps the meaning
        ('send = ""', 'send = ""'),
        ("send = ''", "send = ''"),
    ],
)
def test_qstrings_keep_their_quote_meaning(line, written):
    model = parse(f"virtual v {{\n {line}\n}}\n")
    text = roundtrip(model)
    assert f"     {written}\n" in text


def test_qstring_that_cannot_be_written():
    double = VirtualService(name="v", send='a "b" c')
    with pytest.raises(EmitError, match="double-quoted"):
        fmt(Config(virtuals=(double,)))
    single = VirtualService(name="v", send="it's", single_quoted=frozenset({"send"}))
    with pytest.raises(EmitError, match="single-quoted"):
        fmt(Config(virtuals=(single,)))


def test_strings_with_blanks_and_quotes_are_quoted_with_the_other_char():
    model = parse(
        "rsh_command = 'ssh -o \"BatchMode yes\"'\n"
        'active_cmd = "/bin/run it\'s"\n'
        "inactive_cmd = ''\n"
    )
    text = roundtrip(model)
    assert "rsh_command = 'ssh -o \"BatchMode yes\"'\n" in text
    assert 'active_cmd = "/bin/run it\'s"\n' in text
    assert 'inactive_cmd = ""\n' in text


def test_block_names():
    model = parse('virtual "my web" {\n active = 1\n server "a b" {\n }\n}\n')
    assert model.virtuals[0].name == "my web"
    assert 'virtual "my web" {' in roundtrip(model)
    with pytest.raises(EmitError, match="ends with"):
        fmt(Config(virtuals=(VirtualService(name="v{"),)))
    with pytest.raises(EmitError):
        fmt(Config(virtuals=(VirtualService(name=""),)))


def test_dirs_list_and_hostnames_and_ipv6():
    model = parse(
        "primary = router1.example\nbackup = 2001:db8::2\n"
        "virtual v {\n dirs = [ /etc /var/www ]\n master = m.example\n"
        " address = 2001:db8::80 eth0\n sorry_server = 2001:db8::99\n}\n"
    )
    text = roundtrip(model)
    assert "     dirs = [ /etc /var/www ]\n" in text
    assert "primary = router1.example\n" in text
    with pytest.raises(EmitError, match="`]`"):
        fmt(Config(virtuals=(VirtualService(name="v", dirs=("]",)),)))


def test_fractional_seconds_and_per_virtual_network():
    model = parse(
        "keepalive = 0.25\ndeadtime = 1.5\nnetwork = nat\n"
        "virtual v {\n network = direct\n}\nvirtual w {\n network = nat\n}\n"
    )
    text = roundtrip(model)
    assert "keepalive = 0.25\ndeadtime = 1.5\n" in text
    assert text.count("network = direct") == 1
    assert fmt(Config(keepalive=1e-05)).startswith("keepalive = 0.00001\n")


def test_canonical_text_of_a_piranha_file_is_a_piranha_file():
    text = (
        "serial_no = 3\nprimary = 10.0.0.1\nservice = lvs\nbackup = 10.0.0.2\n"
        "virtual v {\n active = 1\n address = 10.0.0.10 eth0:1\n port = http\n"
        " send = 'GET /'\n server s {\n address = 10.0.1.1\n active = 1\n port = 8080\n }\n}\n"
        "failover f {\n active = 1\n address = 10.0.0.20 eth0:2\n"
        ' start_cmd = "/etc/init.d/x start"\n}\n'
    )
    model = compile_text("t.cf", text, Dialect.PIRANHA).config
    assert parse(fmt(model), Dialect.PIRANHA) == model


def test_servers_and_failovers_round_trip():
    model = Config(
        virtuals=(
            VirtualService(
                name="v",
                port=443,
                servers=(RealServer(name="a", port=443), RealServer(name="b", port=80)),
            ),
        ),
    )
    roundtrip(model)

"""piranha's lexical rules (spec §1.1), one behaviour per test."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from compiler import Dialect, compile_text
from compiler.lexer import QuoteError, tokenize
from compiler.lower import c_strtol, inet_aton
from compiler.model import Network, Scheduler

pytestmark = pytest.mark.unit


def codes(text: str, dialect: Dialect = Dialect.PIRANHA) -> list[tuple[int, int, str]]:
    r = compile_text("t.cf", text, dialect)
    return [(d.span.line, d.span.col, d.code.code) for d in r.diagnostics if d.is_error]


def config(text: str, dialect: Dialect = Dialect.PIRANHA):
    r = compile_text("t.cf", text, dialect)
    assert r.ok, [str(d.span) + " " + d.message for d in r.errors]
    return r.config


@pytest.mark.parametrize(
    ("line", "words", "quotes"),
    [
        ("a = b", ["a", "=", "b"], None),
        ('send = "GET / HTTP/1.0\\r\\n"', ["send", "=", "GET / HTTP/1.0\\r\\n"], ["", "", '"']),
        ("send = 'say \"hi\"'", ["send", "=", 'say "hi"'], ["", "", "'"]),
        ('send = ""', ["send", "=", ""], ["", "", '"']),
        ('x = "primary"', ["x", "=", "primary"], ["", "", '"']),
        ('x = "a b"c', ["x", "=", "a b", "c"], ["", "", '"', ""]),
        ("x = it's", ["x", "=", "it's"], None),
    ],
)
def test_tokenize_like_piranha(line, words, quotes):
    w, q, _ = tokenize(line)
    assert w == words
    assert q == quotes


@pytest.mark.parametrize("line", ['send = "abc', 'send = "ab"cd', 'x = "'])
def test_tokenize_quote_errors(line):
    with pytest.raises(QuoteError):
        tokenize(line)


@pytest.mark.parametrize("line", ['"primary" = x', 'expect = "HTTP" ', 'send = "a" x'])
def test_quoted_word_followed_by_blanks_is_a_mismatch(line):
    # piranha resumes the search for the closing quote at the first blank
    with pytest.raises(QuoteError) as err:
        tokenize(line)
    assert err.value.closed_before_blank
    r = compile_text("t.cf", "virtual v {\n" + line + "\n}\n")
    assert [d.code.code for d in r.errors] == ["LVS015"]
    assert "must end its line" in r.errors[0].help


def test_escaped_quote_is_two_values():
    # no escapes: `"say \"hi\""` is `say \` then `hi\""` -> unexpected arguments
    assert codes('virtual v {\n send = "say \\"hi\\""\n}\n') == [(2, 16, "LVS014")]


def test_comments_only_at_line_start():
    assert codes("  # fine\n\t# fine\nprimary = 1.2.3.4 # not fine\n") == [(3, 19, "LVS014")]


def test_crlf_and_cr_line_ends_and_tabs():
    cfg = config("primary\t=\t10.0.0.1\r\nbackup = 10.0.0.2\rkeepalive = 3\r\n")
    assert cfg.primary == IPv4Address("10.0.0.1")
    assert cfg.backup == IPv4Address("10.0.0.2")
    assert cfg.keepalive == 3
    # line numbers count CRLF once
    assert codes("a = 1\r\nb = 2\r\n") == [(1, 1, "LVS010"), (2, 1, "LVS010")]


@pytest.mark.parametrize(
    ("tok", "value"),
    [("10", 10), ("010", 8), ("0x1f", 31), ("0", 0), ("-3", -3), ("+4", 4), ("", 0), (" 5", 5)],
)
def test_integers_as_strtol(tok, value):
    assert c_strtol(tok) == value


@pytest.mark.parametrize("tok", ["08", "0x", "1e3", "5s", "yes", "1.5", " "])
def test_integer_junk_rejected(tok):
    assert c_strtol(tok) is None


def test_deadtime_octal():
    assert config("deadtime = 010\n").deadtime == 8


def test_booleans_exactly_0_or_1():
    assert codes("backup_active = yes\n") == [(1, 17, "LVS101")]
    assert codes("backup_active = 2\n") == [(1, 17, "LVS102")]
    assert config("backup_active = 0x1\n").backup_active is True


def test_equal_must_be_its_own_word():
    assert codes("primary=1.2.3.4\n") == [(1, 1, "LVS010")]
    assert codes("primary =1.2.3.4\n") == [(1, 9, "LVS012")]
    assert codes("primary\n") == [(1, 1, "LVS012")]
    assert codes("primary =\n") == [(1, 1, "LVS013")]


def test_ports_by_number_or_service_name():
    cfg = config("heartbeat_port = 0x21b\nvirtual v {\n port = http\n}\n")
    assert cfg.heartbeat_port == 539
    assert cfg.virtuals[0].port == 80
    assert codes("virtual v {\n port = no-such-service\n}\n") == [(2, 9, "LVS106")]
    # a real server's port takes numbers only
    assert codes("virtual v {\n server s {\n  port = http\n }\n}\n") == [(3, 10, "LVS101")]


def test_inet_aton_forms():
    assert inet_aton("10.1") == IPv4Address("10.0.0.1")
    assert inet_aton("0x0a000001") == IPv4Address("10.0.0.1")
    assert inet_aton("10.0.0.256") is None


def test_hostnames_accepted_without_dns():
    r = compile_text("t.cf", "primary = lvs1.example.com\n", Dialect.PIRANHA)
    assert r.ok
    assert str(r.config.primary) == "lvs1.example.com"
    assert [d.code.code for d in r.diagnostics] == ["LVS111"]
    assert codes("primary = not/a/host\n") == [(1, 11, "LVS104")]


def test_primary_cannot_be_zero_but_backup_can():
    assert codes("primary = 0.0.0.0\n") == [(1, 11, "LVS107")]
    assert config("backup = 0.0.0.0\n").backup == IPv4Address(0)


def test_values_are_case_sensitive():
    assert codes("network = DIRECT\n") == [(1, 11, "LVS103")]
    assert codes("virtual v {\n protocol = UDP\n}\n") == [(2, 13, "LVS103")]
    assert config("network = tunnel\n").network is Network.TUNNEL


def test_duplicate_keys_last_wins_with_warning():
    r = compile_text("t.cf", "keepalive = 2\nkeepalive = 3\n")
    assert r.config.keepalive == 3
    assert [(d.span.line, d.code.code) for d in r.diagnostics] == [(2, "LVS110")]


def test_dirs_list():
    cfg = config("virtual v {\n dirs = [ /etc /var ]\n}\n")
    assert cfg.virtuals[0].dirs == ("/etc", "/var")
    assert codes("virtual v {\n dirs = /etc\n}\n") == [(2, 2, "LVS019")]


def test_block_header_rules():
    assert codes("virtual v{\n}\n") == [(1, 9, "LVS016")]
    assert codes("virtual v\n{\n}\n") == [(1, 9, "LVS016")]
    assert codes("virtual v {\n active = 1 }\n}\n") == [(2, 13, "LVS014")]
    assert codes("virtual v {\n} junk\n") == [(2, 3, "LVS014")]
    assert codes("}\n") == [(1, 1, "LVS017")]
    # names may contain dots and anything but blanks
    assert config("virtual a.b-c {\n}\n").virtuals[0].name == "a.b-c"


def test_global_keywords_after_virtuals_and_defaults():
    cfg = config("virtual v {\n active = 1\n}\nnetwork = direct\n")
    assert cfg.network is Network.DIRECT
    vs = cfg.virtuals[0]
    assert (vs.port, vs.timeout, vs.reentry, vs.scheduler) == (80, 10, 180, Scheduler.WLC)
    assert (cfg.keepalive, cfg.deadtime, cfg.heartbeat_port) == (2, 5, 539)
    assert cfg.virtuals[0].active and not config("virtual v {\n}\n").virtuals[0].active


def test_private_addresses_default_to_public():
    cfg = config("primary = 10.0.0.1\nbackup = 10.0.0.2\n")
    assert cfg.primary_private == IPv4Address("10.0.0.1")
    assert cfg.backup_private == IPv4Address("10.0.0.2")
    cfg = config("primary = 10.0.0.1\nprimary_private = 10.1.0.1\nbackup = 10.0.0.2\n")
    assert cfg.backup_private is None


def test_pmask_all_ones_means_unset_and_junk_is_ignored():
    vs = config("virtual v {\n persistent = 5\n pmask = 255.255.255.255\n}\n").virtuals[0]
    assert vs.pmask is None
    r = compile_text("t.cf", "virtual v {\n pmask = junk\n}\n", Dialect.PIRANHA)
    assert r.ok
    assert [d.code.code for d in r.diagnostics if d.code.code == "LVS113"] == ["LVS113"]


def test_single_quotes_are_remembered():
    vs = config("virtual v {\n send = 'GET /'\n expect = \"HTTP\"\n}\n").virtuals[0]
    assert vs.send == "GET /"
    assert vs.single_quoted == frozenset({"send"})


def test_empty_and_nul():
    assert codes("") == [(1, 1, "LVS001")]
    r = compile_text("t.cf", "primary = 10.0.0.1\n\x00garbage = 1\n")
    assert r.ok
    assert "LVS002" in [d.code.code for d in r.diagnostics]


def test_keyword_in_wrong_block_and_did_you_mean():
    r = compile_text("t.cf", "virtual v {\n weight = 1\n schedular = rr\n}\n", Dialect.PIRANHA)
    found = [(d.span.line, d.code.code, d.help) for d in r.errors]
    assert found[0][:2] == (2, "LVS011")
    assert found[1][:2] == (3, "LVS010")
    assert "scheduler" in found[1][2]

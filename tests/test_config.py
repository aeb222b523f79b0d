from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest

from dicom_node.config import (
    Config,
    TlsConfig,
    default_config_path,
    load_config,
    parse_config,
)
from dicom_node.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_yaml_equals_the_embedded_defaults() -> None:
    shipped = load_config(ROOT / "config.yaml")
    defaults = parse_config({}, ROOT)
    assert shipped == defaults
    assert shipped.node.ae_title == "TRIAGE"
    assert shipped.node.port == 11112
    assert shipped.node.allowed_calling_aes == ()
    assert shipped.storage.spool_dir == ROOT / "var" / "spool"
    assert shipped.node.tls == TlsConfig()
    assert shipped.engines.backend == "auto"
    assert shipped.engines.cache_dir == ROOT / "var" / "engines"


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("storage:\n  spool_dir: data/spool\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.storage.spool_dir == tmp_path / "data" / "spool"
    assert cfg.storage.database == tmp_path / "data" / "spool" / "state.sqlite3"


@pytest.mark.parametrize(
    ("section", "key"),
    [("storage", "spool_dir"), ("engines", "cache_dir"), ("node.tls", "certificate")],
)
def test_a_home_of_no_such_user_names_the_key(section: str, key: str) -> None:
    raw: dict[str, Any] = {}
    parent = raw
    for part in section.split("."):
        parent = parent.setdefault(part, {})
    parent[key] = "~no-such-user-here/x"
    with pytest.raises(
        ConfigError,
        match=rf"^{section}\.{key}: cannot expand '~' \(.+\), got '~no-such-user-here/x'$",
    ):
        parse_config(raw, ROOT)


def test_a_folder_destination_under_no_such_home_names_the_key() -> None:
    raw = {"destinations": [{"name": "disk", "type": "folder", "path": "~no-such-user-here"}]}
    with pytest.raises(ConfigError, match=r"^destinations\[0\]\.path: cannot expand '~'"):
        parse_config(raw, ROOT)


@pytest.mark.parametrize(("value", "hours"), [("null", None), ("0", 0.0), ("36.5", 36.5)])
def test_retention_hours_is_a_number_or_null(
    tmp_path: Path, value: str, hours: float | None
) -> None:
    assert parse_config({}, ROOT).storage.retention_hours == 72.0
    (tmp_path / "c.yaml").write_text(f"storage:\n  retention_hours: {value}\n")
    assert load_config(tmp_path / "c.yaml").storage.retention_hours == hours


def test_overrides_win_over_the_file_and_are_validated(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("node:\n  port: 104\n  ae_title: FROMFILE\n")
    cfg = load_config(tmp_path / "c.yaml", {"node.port": 0, "node.ae_title": "FLAG"})
    assert (cfg.node.port, cfg.node.ae_title) == (0, "FLAG")
    with pytest.raises(
        ConfigError, match=r"node\.port: expected an integer from 0 to 65535, got -1"
    ):
        load_config(tmp_path / "c.yaml", {"node.port": -1})


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_yaml_nan_and_infinity_are_refused_for_durations(tmp_path: Path, value: str) -> None:
    # YAML reads these as floats; NaN would pass "0 or more" and break the outbox's times.
    (tmp_path / "c.yaml").write_text(f"sending:\n  max_backoff_seconds: {value}\n")
    with pytest.raises(
        ConfigError, match=r"^sending\.max_backoff_seconds: expected a finite number of seconds"
    ):
        load_config(tmp_path / "c.yaml")


def test_an_empty_section_takes_command_line_overrides(tmp_path: Path) -> None:
    # Every key commented out leaves the section null; it reads as empty, with or without flags.
    (tmp_path / "c.yaml").write_text("node:\n  # port: 104\nstorage:\nmetrics:\n")
    assert load_config(tmp_path / "c.yaml").node == load_config(None).node
    cfg = load_config(
        tmp_path / "c.yaml",
        {"node.port": 0, "storage.spool_dir": "/srv/spool", "metrics.port": 9200},
    )
    assert (cfg.node.port, cfg.node.ae_title) == (0, "TRIAGE")
    assert cfg.storage.spool_dir == Path("/srv/spool")
    assert cfg.metrics.port == 9200
    (tmp_path / "tls.yaml").write_text("node:\n  tls:\n")
    tls = load_config(tmp_path / "tls.yaml", {"node.tls.require_client_certificate": False})
    assert tls.node.tls == TlsConfig()


def test_an_override_below_a_non_mapping_names_the_section(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("node:\n  tls: on\n")
    with pytest.raises(ConfigError, match=r"^node\.tls: expected a mapping, got true"):
        load_config(tmp_path / "c.yaml", {"node.tls.require_client_certificate": True})


def test_environment_names_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOM_NODE_CONFIG", str(tmp_path / "env.yaml"))
    assert default_config_path() == tmp_path / "env.yaml"
    assert default_config_path("other.yaml") == Path("other.yaml")
    monkeypatch.delenv("DICOM_NODE_CONFIG")
    assert default_config_path() is None


def test_destinations_and_lists_parse() -> None:
    cfg = parse_config(
        {
            "node": {"allowed_calling_aes": ["PACS", " ORTHANC "]},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}],
        }
    )
    assert cfg.node.allowed_calling_aes == ("PACS", "ORTHANC")
    assert cfg.destinations[0].port == 104
    assert Config().assembly.quiet_seconds == 2.0


def test_tls_config_with_files(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    tls = {
        "certificate": "c.pem",
        "key": "k.pem",
        "ca": "ca.pem",
        "require_client_certificate": True,
    }
    cfg = parse_config({"node": {"tls": tls}}, tmp_path)
    assert cfg.node.tls.enabled
    assert cfg.node.tls.ca == tmp_path / "ca.pem"


BAD: list[tuple[dict[str, Any], str]] = [
    ({"nodes": {}}, r"^nodes: unknown key in top level"),
    ({"node": {"prot": 1}}, r"^node\.prot: unknown key in node \(known: .*port"),
    ({"node": []}, r"^node: expected a mapping, got \[\]"),
    ({"node": {"ae_title": ""}}, r"^node\.ae_title: expected an AE title .* got ''"),
    ({"node": {"ae_title": "A" * 17}}, r"^node\.ae_title: expected an AE title"),
    ({"node": {"ae_title": "BAD\\AE"}}, r"^node\.ae_title: .*backslash"),
    ({"node": {"ae_title": 42}}, r"^node\.ae_title: .* got 42; quote it in YAML$"),
    ({"node": {"ae_title": False}}, r"^node\.ae_title: .* got false; quote it in YAML$"),
    (
        {"assembly": {"quiet_seconds": "1e3"}},
        r"^assembly\.quiet_seconds: expected a number of seconds, got '1e3' \(YAML reads it "
        r"as text: write 1\.0e\+3\)$",  # 1.0e3 is still text to YAML 1.1
    ),
    (  # was "write 0.0": a key that allows 0 took it, and meant something else
        {"assembly": {"after_release_seconds": "1e-2"}},
        r"^assembly\.after_release_seconds: .* got '1e-2' \(YAML reads it as text: write 1\.0e-2\)$",
    ),
    ({"node": {"port": 70000}}, r"^node\.port: expected an integer from 0 to 65535, got 70000"),
    ({"node": {"port": "11112"}}, r"^node\.port: .* got '11112'"),
    ({"node": {"port": True}}, r"^node\.port: .* got true"),
    # As written in YAML (was: datetime.date(2024, 1, 1)), with the hint to quote it.
    (
        {"storage": {"spool_dir": datetime.date(2024, 1, 1)}},
        r"^storage\.spool_dir: expected a non-empty string, got 2024-01-01; quote it in YAML$",
    ),
    (
        {"node": {"host": "bad host"}},
        r"^node\.host: expected a host name or IP address, got 'bad host'",
    ),
    ({"node": {"host": ""}}, r"^node\.host: expected a non-empty string, got ''"),
    # HOST:PORT passed, and the destination was only ever unreachable ([h:104]:104).
    (
        {
            "destinations": [
                {"name": "p", "ae_title": "P", "host": "pacs.example.org:104", "port": 104}
            ]
        },
        r"^destinations\[0\]\.host: expected a host name or IP address \(a port goes in its "
        r"own key\), got 'pacs\.example\.org:104'$",
    ),
    ({"metrics": {"host": "::1:9108:"}}, r"^metrics\.host: .*own key\), got '::1:9108:'$"),
    (
        {"node": {"host": "999.1.1.1"}},
        r"^node\.host: expected an IPv4 address, got '999\.1\.1\.1'$",
    ),
    (
        {"node": {"allowed_calling_aes": "PACS"}},
        r"^node\.allowed_calling_aes: expected a list, got 'PACS'",
    ),
    (
        {"node": {"allowed_calling_aes": ["OK", ""]}},
        r"^node\.allowed_calling_aes\[1\]: expected an AE title",
    ),
    (
        {"node": {"require_called_ae": "yes"}},
        r"^node\.require_called_ae: expected true or false, got 'yes'",
    ),
    (
        {"node": {"max_associations": 0}},
        r"^node\.max_associations: expected an integer from 1 to 1000, got 0",
    ),
    (
        {"node": {"max_pdu": 100}},
        r"^node\.max_pdu: expected 0 \(unlimited\) or an integer from 4096",
    ),
    (
        {"node": {"max_instance_bytes": 10}},
        r"^node\.max_instance_bytes: expected an integer from 1024",
    ),
    (
        {"node": {"network_timeout_seconds": 0}},
        r"^node\.network_timeout_seconds: expected a number greater than 0, got 0",
    ),
    (
        {"node": {"drain_seconds": -1}},
        r"^node\.drain_seconds: expected a number of 0 or more, got -1",
    ),
    (  # was accepted; serve died with OverflowError (timestamp out of range for time_t)
        {"node": {"network_timeout_seconds": 1.0e12}},
        r"^node\.network_timeout_seconds: expected at most 10000000 seconds \(115 days\), "
        r"got 1000000000000\.0$",
    ),
    (
        {"sending": {"timeout_seconds": 2e7}},
        r"^sending\.timeout_seconds: expected at most 10000000 seconds",
    ),
    (  # the metrics endpoint would take the DICOM port; serve blamed node.port
        {"metrics": {"port": 11112}},
        r"^metrics\.port: must differ from node\.port \(11112\) on the same address "
        r"\(node\.host 0\.0\.0\.0, metrics\.host 127\.0\.0\.1\), got 11112$",
    ),
    (
        {"node": {"host": "127.0.0.1", "port": 9200}, "metrics": {"port": 9200}},
        r"^metrics\.port: must differ from node\.port \(9200\)",
    ),
    (  # one address spelled two ways: check-config said OK, serve blamed node.port
        {"node": {"host": "localhost", "port": 9200}, "metrics": {"port": 9200}},
        r"^metrics\.port: must differ from node\.port \(9200\) on the same address "
        r"\(node\.host localhost, metrics\.host 127\.0\.0\.1\), got 9200$",
    ),
    (
        {"node": {"drain_seconds": "soon"}},
        r"^node\.drain_seconds: expected a number of seconds, got 'soon'",
    ),
    (
        {"node": {"network_timeout_seconds": float("nan")}},
        r"^node\.network_timeout_seconds: expected a finite number of seconds, got nan$",
    ),
    (
        {"node": {"acse_timeout_seconds": float("inf")}},
        r"^node\.acse_timeout_seconds: expected a finite number of seconds, got inf$",
    ),
    (
        {"node": {"drain_seconds": float("nan")}},
        r"^node\.drain_seconds: expected a finite number of seconds, got nan$",
    ),
    (
        {"node": {"drain_seconds": float("-inf")}},
        r"^node\.drain_seconds: expected a finite number of seconds, got -inf$",
    ),
    (
        {"node": {"drain_seconds": 10**400}},
        r"^node\.drain_seconds: expected a finite number of seconds, got 1000",
    ),
    (
        {"node": {"tls": {"certificate": "missing.pem", "key": "missing.pem"}}},
        r"^node\.tls\.certificate: file not found",
    ),
    (  # was "file not found": the admin looked for a file that is not missing
        {"node": {"tls": {"certificate": "/", "key": "missing.pem"}}},
        r"^node\.tls\.certificate: expected a file, got '/', a folder$",
    ),
    (
        {"node": {"tls": {"certificate": "/dev/null", "key": "missing.pem"}}},
        r"^node\.tls\.certificate: expected a file, got '/dev/null', not a regular file$",
    ),
    ({"node": {"tls": {"cipher": "x"}}}, r"^node\.tls\.cipher: unknown key in node\.tls"),
    ({"node": {"tls": "on"}}, r"^node\.tls: expected a mapping, got 'on'"),
    (
        {"node": {"tls": {"require_client_certificate": 1}}},
        r"^node\.tls\.require_client_certificate: expected true or false",
    ),
    ({"storage": {"spool_dir": ""}}, r"^storage\.spool_dir: expected a non-empty string"),
    ({"storage": {"min_free_bytes": -5}}, r"^storage\.min_free_bytes: expected an integer from 0"),
    ({"storage": {"database": "x"}}, r"^storage\.database: unknown key"),
    (
        {"storage": {"retention_hours": -1}},
        r"^storage\.retention_hours: expected a number of hours from 0 to 876000 \(a century\) "
        r"or null \(keep forever\), got -1$",
    ),
    (
        {"storage": {"retention_hours": "3d"}},
        r"^storage\.retention_hours: expected a number of hours .* got '3d'",
    ),
    (
        {"storage": {"retention_hours": True}},
        r"^storage\.retention_hours: expected a number of hours .* got true",
    ),
    (
        {"storage": {"retention_hours": "1e3"}},
        r"^storage\.retention_hours: expected a number of hours .* got '1e3' \(YAML reads it "
        r"as text: write 1\.0e\+3\)$",
    ),
    (
        {"storage": {"retention_hours": float("inf")}},
        r"^storage\.retention_hours: expected a number of hours .* got inf",
    ),
    (  # was an OverflowError traceback (math.isfinite of a 400-digit int)
        {"storage": {"retention_hours": 10**400}},
        r"^storage\.retention_hours: expected a number of hours from 0 to 876000 \(a century\) "
        r"or null \(keep forever\), got 1000",
    ),
    (  # was accepted: 1e306 hours made the retention interval infinite
        {"storage": {"retention_hours": 876_001}},
        r"^storage\.retention_hours: expected a number of hours from 0 to 876000 .* got 876001$",
    ),
    *(
        (  # were read as none: no CT counted, no lateral paired, every study skipped
            {"routing": {key: None}},
            rf"^routing\.{key}: expected a list, got null \(every item commented out\?\): write "
            r"\[\] for none, or remove the key for the default$",
        )
        for key in ("rules", "cascade", "lateral_views", "ct_body_parts")
    ),
    (
        {"assembly": {"quiet_seconds": 0}},
        r"^assembly\.quiet_seconds: expected a number greater than 0, got 0",
    ),
    (
        {"assembly": {"quiet_seconds": float("inf")}},
        r"^assembly\.quiet_seconds: expected a finite number of seconds, got inf$",
    ),
    (
        {"assembly": {"after_release_seconds": float("nan")}},
        r"^assembly\.after_release_seconds: expected a finite number of seconds, got nan$",
    ),
    (
        {"assembly": {"max_wait_seconds": float("inf")}},
        r"^assembly\.max_wait_seconds: expected a finite number of seconds, got inf$",
    ),
    (
        {"assembly": {"after_release_seconds": 9}},
        r"^assembly\.after_release_seconds: must not exceed assembly\.quiet_seconds \(2\.0\), got 9\.0",
    ),
    (
        {"assembly": {"max_wait_seconds": 1}},
        r"^assembly\.max_wait_seconds: must be at least assembly\.quiet_seconds \(2\.0\), got 1\.0",
    ),
    ({"destinations": {"name": "x"}}, r"^destinations: expected a list"),
    ({"destinations": ["pacs"]}, r"^destinations\[0\]: expected a mapping, got 'pacs'"),
    (
        {"destinations": [{"name": "p", "ae_title": "P", "host": "h"}]},
        r"^destinations\[0\]\.port: required, got nothing",
    ),
    (
        {"destinations": [{"name": "p", "ae_title": "P", "host": "h", "port": 0}]},
        r"^destinations\[0\]\.port: expected an integer from 1 to 65535, got 0",
    ),
    (
        {"destinations": [{"name": "p q", "ae_title": "P", "host": "h", "port": 1}]},
        r"^destinations\[0\]\.name: expected letters",
    ),
    (
        {"destinations": [{"name": "p", "ae_title": "P", "host": "h", "port": 1, "tls": True}]},
        r"^destinations\[0\]\.tls: unknown key",
    ),
    (
        {"destinations": [{"name": "p", "ae_title": "P", "host": "h", "port": 1}] * 2},
        r"^destinations\[1\]\.name: duplicate destination name, got 'p'",
    ),
    (
        {"metrics": {"port": 65536}},
        r"^metrics\.port: expected an integer from 0 to 65535, got 65536",
    ),
    ({"metrics": {"path": "/m"}}, r"^metrics\.path: unknown key"),
    (
        {"metrics": {"echo_interval_seconds": float("nan")}},
        r"^metrics\.echo_interval_seconds: expected a finite number of seconds, got nan$",
    ),
    # As written: ' info ' was shown upper-cased, ' INFO ', as if that had been typed.
    ({"logging": {"level": " loud "}}, r"^logging\.level: expected one of DEBUG, .* got ' loud '$"),
    ({"logging": {"format": "xml"}}, r"^logging\.format: expected 'plain' or 'json', got 'xml'"),
    (
        {"engines": {"backend": "cuda"}},
        r"^engines\.backend: expected one of auto, onnxruntime, torch, tensorrt, triton, got 'cuda'",
    ),
    (
        {"engines": {"precision": "int8"}},
        r"^engines\.precision: expected 'fp32' or 'fp16', got 'int8'",
    ),
    ({"engines": {"threads": -1}}, r"^engines\.threads: expected an integer from 0 to 256, got -1"),
    ({"engines": {"cache": "x"}}, r"^engines\.cache: unknown key in engines"),
    (
        {"engines": {"triton": {"url": "http://host:8001"}}},
        r"^engines\.triton\.url: expected HOST:PORT \(gRPC, a port from 1 to 65535\), got "
        r"'http://host:8001'",
    ),
    *(
        (
            {"engines": {"triton": {"url": url}}},
            rf"^engines\.triton\.url: expected HOST:PORT \(gRPC, a port from 1 to 65535\), got "
            rf"'{url}'$",
        )
        for url in ("triton:99999", "triton:0")  # were accepted
    ),
    (
        {"engines": {"triton": {"timeout_seconds": 0}}},
        r"^engines\.triton\.timeout_seconds: expected a number greater than 0, got 0",
    ),
    (
        {"engines": {"triton": {"timeout_seconds": float("inf")}}},
        r"^engines\.triton\.timeout_seconds: expected a finite number of seconds, got inf$",
    ),
    ({"engines": {"triton": []}}, r"^engines\.triton: expected a mapping, got \[\]"),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[m for _, m in BAD])
def test_every_bad_value_names_its_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


@pytest.mark.parametrize(
    "host", ["::1", "::", "fe80::1", "0.0.0.0", "10.0.0.5", "pacs-1.example.org"]
)
def test_host_names_and_addresses_are_taken(host: str) -> None:
    cfg = parse_config({"node": {"host": host}, "metrics": {"host": host}})
    assert cfg.node.host == cfg.metrics.host == host


def test_a_tls_file_this_user_may_not_look_at_names_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    # As a user without access to the service's mode-700 folder (the tests run as root):
    # was a bare PermissionError naming no key.
    monkeypatch.setattr(Path, "is_file", denied)
    with pytest.raises(
        ConfigError,
        match=r"^node\.tls\.certificate: cannot look at the file \(Permission denied; check the "
        r"configuration as the node's user\), got '.*locked/cert\.pem'$",
    ):
        parse_config({"node": {"tls": {"certificate": "locked/cert.pem"}}}, tmp_path)


def test_tls_pairing_rules(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    with pytest.raises(
        ConfigError,
        match=rf"^node\.tls: certificate and key must be given together, got "
        rf"certificate='{tmp_path / 'c.pem'}' key=null$",  # was PosixPath('...')
    ):
        parse_config({"node": {"tls": {"certificate": "c.pem"}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^node\.tls\.ca: required when .*require_client"):
        parse_config(
            {
                "node": {
                    "tls": {
                        "certificate": "c.pem",
                        "key": "k.pem",
                        "require_client_certificate": True,
                    }
                }
            },
            tmp_path,
        )
    with pytest.raises(ConfigError, match=r"^node\.tls\.ca: needs node\.tls\.certificate and key"):
        parse_config({"node": {"tls": {"ca": "ca.pem"}}}, tmp_path)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read configuration file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("node: [unclosed\n")
    # One line with the line and column (was 8 lines naming '<unicode string>').
    with pytest.raises(
        ConfigError,
        match=r"bad\.yaml:2:1: not valid YAML \(while parsing a flow sequence; expected ',' or "
        r"'\]', but got '<stream end>'\)$",
    ) as raised:
        load_config(tmp_path / "bad.yaml")
    assert "\n" not in str(raised.value) and "<unicode string>" not in str(raised.value)
    (tmp_path / "tab.yaml").write_text("node:\n  port: 1\n\tae_title: X\n")
    with pytest.raises(ConfigError, match=r"tab\.yaml:3:1: not valid YAML \(.*'\\t'.*\)$"):
        load_config(tmp_path / "tab.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(
        ConfigError, match=r"list\.yaml: expected a mapping at the top level, got \['a', 'b'\]"
    ):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b'results:\n  institution_name: "Klinikum M\xfcnster"\n')
    with pytest.raises(
        ConfigError,
        match=r"latin1\.yaml: not UTF-8 text \(byte 0xFC at offset 40\); save it as UTF-8$",
    ):
        load_config(tmp_path / "latin1.yaml")
    # PyYAML's constructors raise ValueError: was a traceback and exit status 1.
    for name, text, reason in (
        ("date.yaml", "node:\n  ae_title: 2001-02-30\n", "day is out of range for month"),
        ("tag.yaml", "node:\n  port: !!int abc\n", "invalid literal for int"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=rf"{name}: not valid YAML \({reason}"):
            load_config(tmp_path / name)
    # Was: '... position 17' of '"<unicode string>"', over two lines.
    (tmp_path / "nul.yaml").write_text("node:\n  ae_title: A\x00B\n")
    with pytest.raises(
        ConfigError,
        match=r"^.*nul\.yaml: not valid YAML \(unacceptable character #x0000 at character 20: "
        r"special characters are not allowed\)$",
    ):
        load_config(tmp_path / "nul.yaml")
    # Was 4682 and 68: YAML 1.1's octal, a port listened on (or sent to) without a word.
    (tmp_path / "octal.yaml").write_text("node:\n  port: 0104\n")
    with pytest.raises(
        ConfigError,
        match=r"^.*octal\.yaml:2:9: not valid YAML \(0104 has a leading 0, which YAML reads as "
        r"octal \(68\); write it without the 0 \(or quote it where text is meant\)\)$",
    ):
        load_config(tmp_path / "octal.yaml")
    # Was 4320 hours (180 days) and 90.5 s: YAML 1.1's base 60.
    for name, text, shown in (
        ("base60.yaml", "storage:\n  retention_hours: 72:00\n", r"72:00 .* \(4320\)"),
        ("base60f.yaml", "node:\n  drain_seconds: 1:30.5\n", r"1:30\.5 .* \(90\.5\)"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(
            ConfigError,
            match=rf"{name}:2:\d+: not valid YAML \({shown}; write the plain number \(or quote "
            r"it where text is meant\)\)$",
        ):
            load_config(tmp_path / name)
    (tmp_path / "deep.yaml").write_text("node:\n  allowed_calling_aes: " + "[" * 2000 + "]" * 2000)
    # Was a RecursionError traceback (PyYAML's composer recurses).
    with pytest.raises(ConfigError, match=r"deep\.yaml: not valid YAML \(nested too deeply\)$"):
        load_config(tmp_path / "deep.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml").node.ae_title == "TRIAGE"
    (tmp_path / "scalar.yaml").write_text("node: 5\n")
    with pytest.raises(ConfigError, match=r"^node: expected a mapping, got 5"):
        load_config(tmp_path / "scalar.yaml", {"node.port": 1})


def test_yaml_merge_keys_are_read_as_yaml_means_them(tmp_path: Path) -> None:
    # `<<: *anchor` was refused: "could not determine a constructor for the tag merge".
    (tmp_path / "c.yaml").write_text(
        "destinations:\n"
        "  - &pacs {name: pacs1, ae_title: PACS, host: pacs1.example.org, port: 104}\n"
        "  - <<: *pacs\n    name: pacs2\n    host: pacs2.example.org\n"
    )
    first, second = load_config(tmp_path / "c.yaml").destinations
    assert (second.name, second.ae_title, second.host, second.port) == (
        "pacs2", "PACS", "pacs2.example.org", 104
    )  # fmt: skip
    assert first.host == "pacs1.example.org"
    (tmp_path / "twice.yaml").write_text(  # a key given twice beside a merge: still refused
        "base: &b {port: 1}\nnode: {<<: *b, port: 2, port: 3}\n"
    )
    with pytest.raises(ConfigError, match=r"key 'port' given twice"):
        load_config(tmp_path / "twice.yaml")


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [("storage: {spool_dir: afile}", "storage.spool_dir"),
     ("engines: {cache_dir: afile}", "engines.cache_dir"),
     ("destinations: [{name: copies, type: folder, path: afile}]", "destinations[0].path")],
)  # fmt: skip
def test_a_folder_key_naming_a_file_is_refused(tmp_path: Path, yaml_text: str, key: str) -> None:
    # Was OK: `studies` then said "the node has not run yet", `serve` blamed the engines.
    (tmp_path / "afile").write_text("x")
    (tmp_path / "c.yaml").write_text(yaml_text + "\n")
    with pytest.raises(
        ConfigError,
        match=rf"^{re.escape(key)}: expected a folder, got '{tmp_path / 'afile'}', which is not a "
        r"folder$",
    ):
        load_config(tmp_path / "c.yaml")
    # A device too (was accepted once the check stopped raising on permissions).
    (tmp_path / "dev.yaml").write_text(yaml_text.replace("afile", "/dev/null") + "\n")
    with pytest.raises(ConfigError, match=r"got '/dev/null', which is not a folder$"):
        load_config(tmp_path / "dev.yaml")


def test_a_key_given_twice_is_refused_not_replaced(tmp_path: Path) -> None:
    # PyYAML keeps the last: a second node block silently dropped the first one's
    # calling-AE allow-list (any caller accepted) and a second storage block its spool.
    (tmp_path / "c.yaml").write_text(
        "node:\n  allowed_calling_aes: [PACS]\nstorage:\n  spool_dir: /srv/spool\n"
        "node:\n  max_associations: 20\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"c\.yaml:5:1: not valid YAML \(key 'node' given twice \(lines 1 and 5\); the second "
        r"would replace the first",
    ):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "inner.yaml").write_text("node: {port: 1, port: 2}\n")
    with pytest.raises(ConfigError, match=r"key 'port' given twice \(lines 1 and 1\)"):
        load_config(tmp_path / "inner.yaml")
    (tmp_path / "apart.yaml").write_text(  # the same keys in different mappings are fine
        "node:\n  port: 104\nmetrics:\n  port: 9200\n"
    )
    assert load_config(tmp_path / "apart.yaml").metrics.port == 9200

"""Typed settings and the option table: every flag is a config key with the same name,
kind and range; every bad value is one line naming the setting, the value and what is
allowed, whether it came from a flag or a key; the supervisor's SIGHUP compares
settings fields. In-process: ``main()`` and ``parse()`` as the command line calls them."""

from __future__ import annotations

import logging
import math
import pickle
import re
import ssl
import tomllib
from pathlib import Path

import pytest

from hbloop.cli.config import file_values
from hbloop.cli.main import main
from hbloop.cli.options import MAX_COUNT, MAX_SECONDS, MAX_WORKERS, Entry, Flag, table
from hbloop.cli.parser import build_parser, parse
from hbloop.cli.serve import reload_workers
from hbloop.cli.settings import (
    COMMANDS,
    CheckClientSettings,
    CheckSettings,
    ServeSettings,
    changed,
)
from hbloop.net.gather import NATURAL_BATCH_RATE
from hbloop.ops import logs
from hbloop.ops.supervisor import SUPERVISOR_SETTINGS

# A valid value for each option that has no default to try.
SAMPLES = {
    "tcp-keepalive": "30,5,3",
    "tcp-user-timeout": "10",
    "redis": "redis://127.0.0.1:6379/1",
    "max-connections": "7",
    "metrics-port": "9100",
    "count": "4",
    "handshake-timeout": "2",
    "max-handshakes": "2",
    "shutdown-within": "30",
    "listen": "7900",
    "case": "T8",
}


def keys(settings: type) -> set[str]:
    return {entry.name for entry in table(settings) if entry.is_key}


def flags_of(command: str) -> set[str]:
    """The long flags of a command's generated parser."""
    parser = build_parser().commands[command]
    return {
        option[2:]
        for action in parser._actions  # argparse keeps no public list of its options
        for option in action.option_strings
        if option.startswith("--")
    }


@pytest.mark.parametrize("settings", COMMANDS, ids=lambda s: s.command)
def test_every_flag_has_a_key_and_every_key_a_flag(settings: type) -> None:
    # The flags that a config file cannot hold: --help, --config, and serve's --fd (a
    # descriptor is the process's, inherited from its parent).
    assert flags_of(settings.command) - {"help", "config", "fd"} == keys(settings)


def toml_literal(entry: Entry, text: str) -> str:
    """``text`` written as a TOML value of the type the key takes."""
    kind = entry.option.kind
    if isinstance(kind, Flag):
        return "true"
    if int in kind.toml_types and text.lstrip("-").isdigit():
        return text
    if float in kind.toml_types:
        return text
    return f'"{text}"'


def entries() -> list[tuple[str, Entry]]:
    return [(s.command, e) for s in COMMANDS for e in table(s) if e.is_key]


@pytest.mark.parametrize(("command", "entry"), entries(), ids=lambda x: getattr(x, "name", x))
def test_a_key_takes_what_its_flag_takes(command: str, entry: Entry) -> None:
    """The same text, given to the flag and to the key, is the same value."""
    choices = entry.option.kind.choices
    text = SAMPLES.get(entry.name) or entry.default_text() or (choices or ["x"])[0]
    if entry.option.default_text is not None:  # a stand-in default: try a real value
        text = SAMPLES.get(entry.name, "7")
    literal = toml_literal(entry, text)
    repeat = entry.option.repeat  # the flag given once, the key an array of one
    table_ = tomllib.loads(f"{entry.name} = {f'[{literal}]' if repeat else literal}")
    from_key = file_values([entry], table_, "f.toml", f"hbloop {command}")[entry.field]
    kind = entry.option.kind
    from_flag = True if isinstance(kind, Flag) else kind.parse(text)
    assert from_key == ((from_flag,) if repeat else from_flag)


def test_a_count_given_as_a_number_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / "hbloop.toml"
    config.write_text("max-peer-rate = 500\ntls-handshake-rate = 200\nworkers = 2\n")
    settings = parse(["serve", "--config", str(config)])
    assert isinstance(settings, ServeSettings)
    assert (settings.max_peer_rate, settings.tls_handshake_rate, settings.workers) == (500, 200, 2)


@pytest.mark.parametrize("settings", COMMANDS, ids=lambda s: s.command)
def test_help_suggests_only_keys_the_command_takes(settings: type, capsys) -> None:
    with pytest.raises(SystemExit):
        parse([settings.command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    suggested = set(re.findall(r"\b([a-z][a-z-]*) = ", text))
    assert suggested, text
    assert suggested <= keys(settings), suggested - keys(settings)


def refusal(capsys, *argv: str) -> str:
    """The one error line of a command line that must be refused with exit code 2."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("hbloop: error: ")
    return lines[0]


SECONDS = f"must be > 0 and at most {MAX_SECONDS}"
COUNT = f"must be at least 1 and at most {MAX_COUNT}"
PORT = "is not a number from 1 to 65535"

# (command, key, value as TOML writes it, what the line must say is allowed)
BAD_VALUES = [
    ("serve", "interval", "nan", SECONDS),
    ("serve", "interval", "inf", SECONDS),
    ("serve", "interval", "-inf", SECONDS),
    ("serve", "interval", "1e+308", SECONDS),
    ("serve", "timeout", "-1", SECONDS),
    ("serve", "shutdown-grace", "-1", f"must be >= 0 and at most {MAX_SECONDS}"),
    ("serve", "tcp-user-timeout", "10000000.0", f">= 0.001 and at most {MAX_SECONDS}"),
    ("serve", "tcp-user-timeout", "0.0001", f">= 0.001 and at most {MAX_SECONDS}"),
    ("serve", "tcp-keepalive", '"40000,10,5"', "keepalive idle 40000 is out of range 1-32767"),
    ("serve", "tcp-keepalive", '"60,10,128"', "keepalive count 128 is out of range 1-127"),
    ("serve", "tcp-keepalive", '"60"', "is not IDLE,INTERVAL,COUNT (e.g. 60,10,5)"),
    ("serve", "backlog", "2147483648", COUNT),
    ("serve", "max-connections", "0", COUNT),
    ("serve", "max-peer-rate", "-1", f"must be at least 0 and at most {MAX_COUNT}"),
    ("serve", "workers", "0", f"must be at least 1 and at most {MAX_WORKERS}"),
    ("serve", "workers", str(MAX_WORKERS + 1), f"at most {MAX_WORKERS} (4 per CPU), or auto"),
    ("serve", "port", "70000", "out of range 0-65535"),
    ("serve", "redis", '"redis://localhost:notaport/0"', f"the port 'notaport' {PORT}"),
    ("serve", "redis", '"redis://localhost:6379/abc"', "the database 'abc' is not a whole number"),
    ("serve", "tls-handshake-rate", "0", f"must be > 0 and at most {MAX_COUNT}"),
    ("client", "backoff-max", "nan", SECONDS),
    ("client", "interval", "-1", f"must be >= 0 and at most {MAX_SECONDS}"),
    ("check", "answer-timeout", "inf", SECONDS),
    ("watch", "count", "0", COUNT),
]


@pytest.mark.parametrize(("command", "key", "value", "allowed"), BAD_VALUES)
def test_a_bad_value_is_one_line_naming_it_by_flag_and_by_key(
    command: str, key: str, value: str, allowed: str, tmp_path: Path, capsys
) -> None:
    text = value.strip('"')
    shown = repr(str(tomllib.loads(f"v = {value}")["v"]))  # as the file gives it
    required = {"check": ["127.0.0.1:1"], "watch": ["--redis", "redis://127.0.0.1"]}
    head = [command, *required.get(command, [])]
    by_flag = refusal(capsys, *head, f"--{key}={text}")  # "=": -inf is not an option
    assert f"argument --{key}: " in by_flag and allowed in by_flag
    assert repr(text) in by_flag or text in by_flag
    config = tmp_path / "bad.toml"
    config.write_text(f"{key} = {value}\n")
    by_key = refusal(capsys, *head, "--config", str(config))
    assert f"config file {config}: {key}: " in by_key and allowed in by_key
    assert shown in by_key or text in by_key


def test_a_value_of_the_wrong_toml_type_names_the_type(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("port = 7878.0\n")
    assert refusal(capsys, "serve", "--config", str(config)).endswith(
        "port must be an integer, not a float"
    )


def cases_of(*argv: str) -> tuple[str, ...]:
    settings = parse(list(argv))
    assert isinstance(settings, CheckSettings | CheckClientSettings)
    return settings.case


@pytest.mark.parametrize("command", ["check", "check-client"])
def test_case_is_repeated_or_an_array_and_must_name_a_case(
    command: str, tmp_path: Path, capsys
) -> None:
    tail = ["127.0.0.1:1"] if command == "check" else ["--", "true"]
    assert cases_of(command, "--case", "t3", "--case", "2", *tail) == ("t3", "2")
    config = tmp_path / "cases.toml"
    config.write_text('case = ["T3", 2]\n')
    assert cases_of(command, "--config", str(config), *tail) == ("T3", "2")
    line = refusal(capsys, command, "--case", "Z9", *tail)
    assert line.startswith("hbloop: error: --case 'Z9' is neither a case number (1 to ")
    assert "argument --case: 'T 3' is neither" in refusal(capsys, command, "--case", "T 3", *tail)
    config.write_text('case = "T3"\n')
    by_key = refusal(capsys, command, "--config", str(config), *tail)
    assert by_key.endswith("case must be an array, not a string")


def test_settings_pickle_as_the_supervisor_sends_them() -> None:
    settings = parse(["serve", "--workers", "2", "--tcp-keepalive", "30,5,3"])
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings and copy.command_line == settings.command_line


def test_changed_compares_the_fields() -> None:
    old = ServeSettings()
    new = ServeSettings(interval=5, timeout=15, port=9000, log_format="json")
    assert changed(old, new) == ["log_format", "port", "interval", "timeout"]
    assert changed(old, ServeSettings(command_line=("serve",))) == []


def test_a_supervisor_reload_keeps_the_supervisors_own_settings(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(logs, "configure", lambda level, log_format: None)  # not this process's
    config = tmp_path / "hbloop.toml"
    config.write_text("port = 7000\ninterval = 1\ntimeout = 3\n")
    current = parse(["serve", "--config", str(config), "--workers", "2"])
    assert isinstance(current, ServeSettings)
    config.write_text("port = 7001\ninterval = 2\ntimeout = 6\nmetrics-port = 9100\n")
    caplog.set_level(logging.INFO, logger="hbloop.cli")
    new = reload_workers(current)
    assert new is not None
    assert (new.port, new.metrics_port, new.workers) == (7000, None, 2)
    assert (new.interval, new.timeout) == (2, 6)
    assert set(changed(current, new)) == {"interval", "timeout"}
    assert not set(changed(current, new)) & set(SUPERVISOR_SETTINGS)
    assert "SIGHUP: --port, --metrics-port changed; the supervisor keeps" in caplog.text


def der(pem: Path, directory: Path) -> Path:
    """The certificate of ``pem`` in DER, as some tools write it."""
    path = directory / "cert.der"
    path.write_bytes(ssl.PEM_cert_to_DER_cert(pem.read_text()))
    return path


# (certificate file, key file) from the test PKI and a directory; what the line says.
BAD_TLS_FILES = {
    "swapped": (
        lambda pki, d: (pki.server.key, pki.server.cert),
        "the certificate and the key are swapped",
    ),
    "der": (
        lambda pki, d: (der(pki.server.cert, d), pki.server.key),
        "is not PEM (DER? openssl x509",
    ),
    "no key": (lambda pki, d: (pki.server.cert, pki.server.cert), "holds no PEM private key"),
    "another's key": (lambda pki, d: (pki.server.cert, pki.alice.key), "is not the key of"),
}


@pytest.mark.parametrize("case", BAD_TLS_FILES)
def test_unusable_tls_files_are_one_line_by_flag_and_by_key(
    case: str, pki, tmp_path: Path, capsys
) -> None:
    files, says = BAD_TLS_FILES[case]
    cert, key = files(pki, tmp_path)
    by_flag = refusal(
        capsys, "serve", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    config = tmp_path / "tls.toml"
    config.write_text(f'tls-cert = "{cert}"\ntls-key = "{key}"\nport = 0\n')
    by_key = refusal(capsys, "serve", "--config", str(config))
    for line in (by_flag, by_key):
        assert f"cannot load certificate {cert} with key {key}: " in line and says in line


@pytest.mark.parametrize(
    ("flags", "bound", "max_rate"),
    [
        ((), 0.06, NATURAL_BATCH_RATE),  # 1/500 of the 30 s interval, slow rates only
        (("--coalesce", "0"), 0.0, math.inf),
        (("--coalesce", "2"), 0.002, math.inf),
    ],
)
def test_the_loop_gathers_as_coalesce_says_or_by_the_interval_without_it(
    flags: tuple[str, ...], bound: float, max_rate: float
) -> None:
    settings = parse(["serve", "--interval", "30", "--timeout", "90", *flags])
    loop = settings.event_loop()
    try:
        assert loop.coalesce == pytest.approx(bound)
        assert loop.coalesce_max_rate == max_rate
    finally:
        loop.close()

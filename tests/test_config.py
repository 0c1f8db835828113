"""Settings from flags, environment and config file; bad input is one clear line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError, DiscoveryMode, Output, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def settings(
    argv: list[str],
    env: dict[str, str] | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> Settings:
    if monkeypatch is not None:
        for name in list(os.environ):
            if name.startswith("NODE_PING_") or name in (
                "MY_NODE_NAME",
                "PROMETHEUS_TEXTFILE_DIR",
                "PROMETHEUS_TEXTFILE_PREFIX",
            ):
                monkeypatch.delenv(name)
        for name, val in (env or {}).items():
            monkeypatch.setenv(name, val)
    return load_settings(argv, dict(os.environ))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings([], monkeypatch=monkeypatch)
    assert (s.interval, s.timeout, s.payload_size, s.window) == (1.0, 1.0, 56, 30)
    assert s.discovery is DiscoveryMode.AUTO and s.output is Output.HTTP
    assert s.listen_address == ":9798"
    assert str(s.textfile_dir) == "/node-exporter-textfile"
    assert s.textfile_prefix == "node-ping_"
    assert s.address_types == ["InternalIP"]


def test_precedence_flags_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "interval: 3\ntimeout: 0.5\nwindow: 10\nexternal_targets:\n"
        "  - {host: localhost, name: lh}\n"
    )
    s = settings(
        ["--config", str(config), "--interval", "2"],
        {"NODE_PING_TIMEOUT": "0.25", "NODE_PING_INTERVAL": "5"},
        monkeypatch,
    )
    assert (s.interval, s.timeout, s.window) == (2.0, 0.25, 10)
    assert [(t.name, t.host) for t in s.external_targets] == [("lh", "localhost")]


def test_original_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(
        [],
        {
            "MY_NODE_NAME": "node-7",
            "PROMETHEUS_TEXTFILE_DIR": "/tf",
            "PROMETHEUS_TEXTFILE_PREFIX": "np_",
        },
        monkeypatch,
    )
    assert s.node_name == "node-7"
    assert str(s.textfile_path) == "/tf/np_node-7.prom"


def test_lists_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(
        [
            "--peer",
            "a=127.0.0.1",
            "--peer",
            "b=::1",
            "--external-target",
            "dns=localhost",
            "--external-target",
            "127.0.0.9",
            "--address-types",
            "InternalIP,ExternalIP",
        ],
        monkeypatch=monkeypatch,
    )
    assert [(p.name, p.address) for p in s.peers] == [("a", "127.0.0.1"), ("b", "::1")]
    assert [(t.name, t.host) for t in s.external_targets] == [
        ("dns", "localhost"),
        ("127.0.0.9", "127.0.0.9"),
    ]
    assert s.address_types == ["InternalIP", "ExternalIP"]
    s = settings([], {"NODE_PING_PEERS": "a=127.0.0.1, b=127.0.0.2"}, monkeypatch)
    assert [p.name for p in s.peers] == ["a", "b"]


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        (
            ["--interval", "0"],
            {},
            "invalid setting 'interval' (--interval / NODE_PING_INTERVAL): "
            "Input should be greater than or equal to 0.02",
        ),
        # Defect 13: faster than the prober can pace.
        (["--interval", "0.005"], {}, "greater than or equal to 0.02"),
        # Defect 1: no infinite or NaN number anywhere.
        (["--interval", "inf"], {}, "invalid setting 'interval'"),
        ([], {"NODE_PING_INTERVAL": "Infinity"}, "invalid setting 'interval'"),
        (["--timeout", "nan"], {}, "invalid setting 'timeout'"),
        (["--resolve-interval", "inf"], {}, "invalid setting 'resolve_interval'"),
        (["--textfile-interval=-inf"], {}, "invalid setting 'textfile_interval'"),
        (["--peers-file-poll-interval", "inf"], {}, "invalid setting 'peers_file_poll_interval'"),
        # Defect 10: node names become part of the textfile path.
        (["--node-name", "../escape"], {}, "invalid setting 'node_name'"),
        (["--node-name", "*"], {}, "is not a Kubernetes node name"),
        ([], {"NODE_PING_NODE_NAME": "a/b"}, "invalid setting 'node_name'"),
        (["--textfile-prefix", "../x"], {}, "invalid setting 'textfile_prefix'"),
        (["--textfile-prefix", "*"], {}, "invalid setting 'textfile_prefix'"),
        # Defect 14: a peer name cannot carry a newline into logs or labels.
        (["--peer", "a\nb=127.0.0.1"], {}, "invalid setting 'peers' (item 1)"),
        (["--external-target", "bad\x1bname=127.0.0.1"], {}, "must be printable"),
        # Found in review: names the C library reads as IPv4 addresses, and abbreviations.
        (["--external-target", "x=1.2.3"], {}, "'1.2.3' is neither an IP address nor a DNS"),
        (["--external-target", "y=0x7f.1"], {}, "invalid setting 'external_targets'"),
        (["--external-target", "2130706433"], {}, "invalid setting 'external_targets'"),
        (["--check"], {}, "unrecognized arguments: --check"),
        (["--resolve-interval", "0.001"], {}, "invalid setting 'resolve_interval'"),
        (["--textfile-interval", "0.001"], {}, "invalid setting 'textfile_interval'"),
        # Defect 11: two targets with one name would mislabel each other's data.
        (
            ["--external-target", "dns=127.0.0.1", "--external-target", "dns=127.0.0.2"],
            {},
            "two targets are named 'dns'",
        ),
        (["--interval", "x"], {}, "'interval'"),
        ([], {"NODE_PING_TIMEOUT": "-1"}, "invalid setting 'timeout'"),
        (["--icmp-mode", "magic"], {}, "argument --icmp-mode: invalid choice: 'magic'"),
        (["--output", "syslog"], {}, "argument --output: invalid choice"),
        (
            ["--peer", "a=10.0.0.300"],
            {},
            "'peers' (item 1) (--peer / NODE_PING_PEERS): '10.0.0.300' is not an IP address",
        ),
        (["--peer", "just-a-name"], {}, "'just-a-name' is not NAME=IP"),
        (["--payload-size", "8"], {}, "invalid setting 'payload_size'"),
        (["--node-selector", "role in (a,b"], {}, "invalid setting 'node_selector'"),
        (["--address-types", "Hostname"], {}, "'Hostname' is not one of InternalIP, ExternalIP"),
        (["--listen-address", "9798"], {}, "invalid setting 'listen_address'"),
        (["--external-target", "no spaces allowed"], {}, "invalid setting 'external_targets'"),
        ([], {"NODE_PING_DISCOVERY": "consul"}, "invalid setting 'discovery'"),
        (["--log-level", "loud"], {}, "invalid setting 'log_level'"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_values_name_the_setting(
    argv: list[str], env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as error:
        settings(argv, env, monkeypatch)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    for content, expected in (
        ("interval: [\n", "is not valid YAML at line 2"),
        ("- a\n", "must hold a mapping"),
        ("intervall: 1\n", "unknown setting 'intervall' in the config file"),
        # Defect 1: YAML's infinity.
        ("interval: .inf\n", "invalid setting 'interval'"),
        ("timeout: .nan\n", "invalid setting 'timeout'"),
        # Defect 9: a scalar where a list is expected, and loose coercions.
        (
            "peers: 5\n",
            "invalid setting 'peers' (--peer / NODE_PING_PEERS) in the config file: must be a list",
        ),
        ("external_targets: 5\n", "invalid setting 'external_targets'"),
        ("address_types: true\n", "invalid setting 'address_types'"),
        (
            "window: true\n",
            "invalid setting 'window' (--window / NODE_PING_WINDOW) in the config file: must be a",
        ),
        ("interval: false\n", "invalid setting 'interval'"),
        ("ping_self: 1\n", "invalid setting 'ping_self'"),
        ("node_name: 5\n", "invalid setting 'node_name'"),
        ("peers: [{name: a, address: 5}]\n", "invalid setting 'peers' (item 1)"),
        ("external_targets: [{host: 127.0.0.1, name: 7}]\n", "invalid setting 'external_targets'"),
        (
            "external_targets: [{host: 127.0.0.1, name: x}, {host: 127.0.0.2, name: x}]\n",
            "two targets are named 'x'",
        ),
        ("peers: [[1, 2]]\n", "invalid setting 'peers' (item 1)"),
        # Found in review: text where the file can say what it means.
        ("peers: 'a=10.0.0.1'\n", "invalid setting 'peers' (--peer / NODE_PING_PEERS) in the"),
        ("external_targets: example.com\n", "must be a list, got 'example.com'"),
        ("address_types: InternalIP\n", "invalid setting 'address_types'"),
        ("window: '30'\n", "invalid setting 'window' (--window / NODE_PING_WINDOW) in the"),
        ("max_peers: 1.0\n", "must be a whole number"),
        ("log_level: 5\n", "must be text"),
        ("peers_file: [a]\n", "invalid setting 'peers_file'"),
    ):
        path.write_text(content)
        with pytest.raises(ConfigError) as error:
            settings(["--config", str(path)], monkeypatch=monkeypatch)
        assert expected in str(error.value), content
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="cannot read"):
        settings(["--config", str(tmp_path / "missing.yaml")], monkeypatch=monkeypatch)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=30,
    )


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--interval", "-5"], {}, "invalid setting 'interval'"),
        (["--bogus"], {}, "unrecognized arguments"),
        (
            ["--discovery", "file", "--peers-file", "/nonexistent/nodes.json"],
            {},
            "invalid setting 'peers_file' (--peers-file): cannot read /nonexistent/nodes.json",
        ),
        (["--discovery", "static"], {}, "static discovery needs at least one --peer"),
        (
            ["--discovery", "kubernetes", "--kubeconfig", "/nonexistent/kubeconfig"],
            {},
            "invalid setting 'kubeconfig'",
        ),
        ([], {"NODE_PING_WINDOW": "0"}, "invalid setting 'window'"),
    ],
)
def test_cli_exits_2_with_one_line_and_no_traceback(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("node-ping-exporter: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_malformed_peers_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    peers = tmp_path / "nodes.json"
    for content, expected in (
        ("{not json", "is not valid JSON"),
        ('{"name": "a"}', "must hold a JSON list"),
        ('[{"name": "a", "ipAddress": "1.2.3"}]', "entry 1 (a): '1.2.3' is not an IP address"),
        ('[{"ipAddress": "127.0.0.1"}]', "entry 1 has no 'name'"),
    ):
        peers.write_text(content)
        result = run_cli("--discovery", "file", "--peers-file", str(peers))
        assert result.returncode == 2
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("node-ping-exporter ")

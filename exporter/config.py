"""Settings: command-line flags > environment > YAML config file > defaults.

One pydantic model holds every setting; the command-line parser and the
environment's names are generated from it, so a setting has one name
everywhere: field ``max_peers`` is flag ``--max-peers``, variable
``NODE_PING_MAX_PEERS`` and key ``max_peers`` in the config file. (The
environment is read by env_values(), not pydantic-settings: that package cost
4.6 MB of memory on every node for what is a dozen lines here.) Any invalid
value becomes a :class:`ConfigError` whose message is one line naming the
setting and the problem.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .icmp import MIN_PAYLOAD_SIZE, IcmpMode

ENV_PREFIX = "NODE_PING_"
DEFAULT_PORT = 9798


class ConfigError(Exception):
    """Bad input; the message is the single line printed before exit code 2."""


class DiscoveryMode(StrEnum):
    AUTO = "auto"
    KUBERNETES = "kubernetes"
    FILE = "file"
    STATIC = "static"


class PairMetrics(StrEnum):
    REDUCED = "reduced"
    FULL = "full"


class Output(StrEnum):
    HTTP = "http"
    TEXTFILE = "textfile"
    BOTH = "both"


class MetricsAuth(StrEnum):
    NONE = "none"
    KUBERNETES = "kubernetes"


class LogFormat(StrEnum):
    PLAIN = "plain"
    JSON = "json"


class StaticPeer(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str = Field(min_length=1)
    address: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_node_name(value)

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        return normalise_ip(value)


class ExternalTarget(BaseModel):
    model_config = ConfigDict(strict=True)

    host: str = Field(min_length=1, description="IP address or DNS name")
    name: str = Field(default="", description="label value; defaults to host")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        # A name ending in a number (1.2.3, 0x7f.1) would not go to DNS: the C library
        # reads it as an IPv4 address (1.2.0.3, 127.0.0.1), not the one meant.
        if not is_ip(value) and (not HOSTNAME.fullmatch(value) or NUMERIC_LAST_LABEL.search(value)):
            raise ValueError(f"'{value}' is neither an IP address nor a DNS name")
        return value

    @field_validator("name")
    @classmethod
    def _label(cls, value: str) -> str:
        return check_label_value(value)

    def model_post_init(self, context: Any, /) -> None:
        if not self.name:
            self.name = self.host


HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
TEXTFILE_PREFIX = re.compile(r"([A-Za-z0-9_-][A-Za-z0-9_.-]{0,63})?")
NUMERIC_LAST_LABEL = re.compile(r"(^|\.)(0x[0-9a-fA-F]*|[0-9]+)\.?$")
ADDRESS_TYPES = ("InternalIP", "ExternalIP")
# One requirement of a Kubernetes label selector: key, !key, key=v, key==v,
# key!=v, key in (a,b), key notin (a,b).
_LABEL_KEY = r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
SELECTOR_REQUIREMENT = re.compile(
    rf"\s*(!?{_LABEL_KEY}|{_LABEL_KEY}\s*(==?|!=)\s*{_LABEL_VALUE}"
    rf"|{_LABEL_KEY}\s+(in|notin)\s+\(\s*{_LABEL_VALUE}(\s*,\s*{_LABEL_VALUE})*\s*\))\s*"
)


# A Kubernetes object name (DNS-1123 subdomain), as Node names are.
NODE_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
MAX_LABEL_VALUE = 253
# A Kubernetes label value, as topology.kubernetes.io/zone is.
ZONE = re.compile(r"(?=.{0,63}$)([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
# The prober paces sends on ticks of at least 10 ms; twice that is the shortest
# interval it honours exactly (tests/test_prober_scripted.py).
MIN_INTERVAL_SECONDS = 0.02
# The largest echo payload that crosses any IPv6 path (minimum MTU 1280) whole.
MAX_UNFRAGMENTED_PAYLOAD = 1280 - 48


def check_node_name(value: str) -> str:
    """A node name becomes a label value and part of the textfile's path: only
    Kubernetes names (lower-case letters, digits, '-', '.') are accepted."""
    if not NODE_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Kubernetes node name (lower-case letters, digits, '-' "
            "and '.', at most 253 characters)"
        )
    return value


def check_zone(value: str) -> str:
    """A topology zone: a Kubernetes label value (at most 63 letters, digits, '-', '_'
    and '.', starting and ending with a letter or digit), or empty for none."""
    if not ZONE.fullmatch(value):
        raise ValueError(
            f"zone {value!r} is not a Kubernetes label value (at most 63 letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit)"
        )
    return value


def check_label_value(value: str) -> str:
    """A name that becomes a label value: printable text, no control characters."""
    if len(value) > MAX_LABEL_VALUE or not value.isprintable():
        raise ValueError(
            f"{value!r} must be printable text of at most {MAX_LABEL_VALUE} characters"
        )
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{value!r} is not valid UTF-8") from None
    return value


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def normalise_ip(value: str) -> str:
    try:
        return ipaddress.ip_address(value.strip()).compressed
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address") from None


def _split_list(value: Any) -> list[Any]:
    """Lists may come as one comma-separated string (environment variables)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list, got {type(value).__name__} {value!r}")
    return list(value)


def _split_selector(selector: str) -> list[str]:
    """Split on commas that are not inside an ``in (...)`` list."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


class Settings(BaseModel):
    """Every setting, validated; load_settings() gathers them from their three places."""

    model_config = ConfigDict(
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        use_enum_values=False,
        allow_inf_nan=False,
    )

    node_name: str = Field(
        default_factory=lambda: socket.gethostname().lower(),  # as the kubelet names it
        min_length=1,
        validation_alias=AliasChoices("NODE_PING_NODE_NAME", "MY_NODE_NAME"),
        description="this node's name: the source_node label, and excluded from its peers",
    )
    discovery: DiscoveryMode = Field(
        default=DiscoveryMode.AUTO,
        description="where peers come from: kubernetes (Node objects), file (peers JSON), "
        "static (--peer); auto picks kubernetes in a cluster, else static if --peer "
        "is given, else file",
    )
    peers: list[StaticPeer] = Field(
        default_factory=list,
        json_schema_extra={"flag": "--peer", "metavar": "NAME=IP"},
        description="a static peer (repeatable)",
    )
    peers_file: Path = Field(
        default=Path("/config/nodes.json"),
        description='peers file: JSON list of {"name": ..., "ipAddress": ...}, re-read on change',
    )
    peers_file_poll_interval: float = Field(
        default=2.0, ge=0.1, description="seconds between checks of the peers file"
    )
    kubeconfig: Path | None = Field(
        default=None, description="kubeconfig for running outside a cluster"
    )
    node_selector: str = Field(
        default="", description="label selector: only matching nodes become peers"
    )
    address_types: list[str] = Field(
        default_factory=lambda: ["InternalIP"],
        description="node address types to probe, comma-separated (InternalIP,ExternalIP)",
    )
    ping_self: bool = Field(default=False, description="probe this node's own addresses too")
    max_peers: int = Field(
        default=0,
        ge=0,
        description="probe K nodes (a stable hash ring, plus one node of each zone it "
        "misses); 0 = all",
    )
    max_pairs: int = Field(
        default=10000,
        ge=0,
        description="without --max-peers: probe all nodes while the cluster's pairs "
        "N·(N-1) stay within this, else this/N of them (at least 10): bounds what "
        "Prometheus pays (docs/sizing.md); 0 = always all",
    )
    external_targets: list[ExternalTarget] = Field(
        default_factory=list,
        json_schema_extra={"flag": "--external-target", "metavar": "[NAME=]HOST"},
        description="a target outside the cluster (repeatable)",
    )
    resolve_interval: float = Field(
        default=60.0, ge=0.1, description="seconds between DNS lookups of external targets"
    )
    icmp_mode: IcmpMode = Field(
        default=IcmpMode.AUTO,
        description="auto: unprivileged ping socket if allowed, else raw (CAP_NET_RAW)",
    )
    interval: float = Field(
        default=1.0,
        ge=MIN_INTERVAL_SECONDS,
        le=3600,
        description=f"seconds between probes to a peer (at least {MIN_INTERVAL_SECONDS})",
    )
    timeout: float = Field(default=1.0, gt=0, le=60, description="seconds before a probe is lost")
    payload_size: int = Field(
        default=56, ge=MIN_PAYLOAD_SIZE, le=65000, description="ICMP payload bytes"
    )
    stamp_port: int = Field(
        default=8762,
        ge=0,
        le=65535,
        description="UDP port of the STAMP reflector (RFC 8762) every agent runs, and where "
        "its sender reaches the other nodes' reflectors (one port cluster-wide); 0 = no STAMP",
    )
    stamp_reflect_any: bool = Field(
        default=False,
        description="answer STAMP test packets from any address, not only from known nodes",
    )
    size_probe_interval: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="seconds between path-MTU probes to a node peer (rounded to whole "
        "probe intervals, at least one): echo requests as large as the route allows, never "
        "fragmented (then no echo request is); 0 = none",
    )
    size_probe_bytes: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="size of the path-MTU probe, whole IP packet; 0 = the MTU of the route "
        "to each peer (its interface's); set it to test an overlay's or a VPN's MTU",
    )
    window: int = Field(
        default=30, ge=1, le=10000, description="probes per peer behind rtt min/max/mdev"
    )
    per_peer_histogram: bool = Field(
        default=False, description="also export an RTT histogram per peer (N² series)"
    )
    pair_metrics: PairMetrics = Field(
        default=PairMetrics.REDUCED,
        description="reduced: the per-pair families the rules and dashboards read; full: "
        "also each pair's rtt_min/max/mdev gauges and STAMP RTT sum (4 more series per pair)",
    )
    output: Output = Field(default=Output.HTTP, description="http, textfile or both")
    listen_address: str = Field(
        default=f":{DEFAULT_PORT}", description="HOST:PORT for /metrics, /healthz, /readyz"
    )
    textfile_dir: Path = Field(
        default=Path("/node-exporter-textfile/"),
        validation_alias=AliasChoices("NODE_PING_TEXTFILE_DIR", "PROMETHEUS_TEXTFILE_DIR"),
        description="node-exporter textfile collector directory",
    )
    textfile_prefix: str = Field(
        default="node-ping_",
        validation_alias=AliasChoices("NODE_PING_TEXTFILE_PREFIX", "PROMETHEUS_TEXTFILE_PREFIX"),
        description="textfile name prefix; the file is <dir>/<prefix><node>.prom",
    )
    textfile_interval: float = Field(
        default=10.0, ge=0.01, description="seconds between textfile rewrites"
    )
    tls_cert_file: Path | None = Field(
        default=None, description="serve HTTPS with this certificate (PEM; re-read when it changes)"
    )
    tls_key_file: Path | None = Field(
        default=None, description="the certificate's private key (PEM)"
    )
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="/metrics needs a client certificate signed by this CA (PEM); "
        "the health endpoints do not",
    )
    metrics_auth: MetricsAuth = Field(
        default=MetricsAuth.NONE,
        description="none, or kubernetes: /metrics needs a bearer token that the API server "
        "accepts (TokenReview) and allows to get /metrics (SubjectAccessReview)",
    )
    log_format: LogFormat = Field(default=LogFormat.PLAIN, description="plain or json")
    log_level: str = Field(default="info", description="debug, info, warning or error")

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, value: str) -> str:
        return check_node_name(value)

    @field_validator("peers", mode="before")
    @classmethod
    def _peers(cls, value: Any) -> Any:
        return [_static_peer(item) for item in _split_list(value)]

    @field_validator("external_targets", mode="before")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        return [_external_target(item) for item in _split_list(value)]

    @field_validator("external_targets")
    @classmethod
    def _unique_targets(cls, value: list[ExternalTarget]) -> list[ExternalTarget]:
        seen: set[str] = set()
        for target in value:
            if target.name in seen:
                raise ValueError(
                    f"two targets are named {target.name!r}: each needs its own name (NAME=HOST)"
                )
            seen.add(target.name)
        return value

    @field_validator("address_types", mode="before")
    @classmethod
    def _address_types(cls, value: Any) -> Any:
        value = _split_list(value)
        for item in value:
            if item not in ADDRESS_TYPES:
                raise ValueError(f"'{item}' is not one of {', '.join(ADDRESS_TYPES)}")
        if not value:
            raise ValueError("at least one address type is needed")
        return value

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        if value.strip():
            for part in _split_selector(value):
                if not SELECTOR_REQUIREMENT.fullmatch(part):
                    raise ValueError(f"'{part.strip()}' is not a valid label selector requirement")
        return value.strip()

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen_address(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"'{value}' is not one of debug, info, warning, error")
        return value.lower()

    @field_validator("textfile_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not TEXTFILE_PREFIX.fullmatch(value):
            raise ValueError(
                "may hold only letters, digits, '_', '-' and '.', and not start with '.'"
            )
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "invalid setting 'tls_cert_file' (--tls-cert-file / --tls-key-file): "
                "HTTPS needs both the certificate and its key"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "invalid setting 'tls_client_ca_file' (--tls-client-ca-file): "
                "client certificates need HTTPS (--tls-cert-file and --tls-key-file)"
            )
        return self

    @model_validator(mode="after")
    def _size_probes(self) -> Settings:
        smallest = MIN_PAYLOAD_SIZE + 48  # an echo request's headers on IPv6
        if self.size_probe_bytes and self.size_probe_bytes < smallest:
            raise ValueError(
                f"invalid setting 'size_probe_bytes' (--size-probe-bytes): "
                f"{self.size_probe_bytes} is smaller than an echo request ({smallest} bytes); "
                "0 = the route's MTU"
            )
        if self.size_probe_interval and self.payload_size > MAX_UNFRAGMENTED_PAYLOAD:
            raise ValueError(
                f"invalid setting 'payload_size' (--payload-size): {self.payload_size} bytes "
                "would need fragmenting, and with path-MTU probes on echo requests are never "
                f"fragmented: at most {MAX_UNFRAGMENTED_PAYLOAD} (IPv6's minimum MTU), or "
                "--size-probe-interval 0"
            )
        return self

    @property
    def textfile_path(self) -> Path:
        return self.textfile_dir / f"{self.textfile_prefix}{self.node_name}.prom"

    @property
    def wants_http(self) -> bool:
        return self.output in (Output.HTTP, Output.BOTH)

    @property
    def wants_textfile(self) -> bool:
        return self.output in (Output.TEXTFILE, Output.BOTH)


def _static_peer(item: Any) -> Any:
    if isinstance(item, str):
        name, sep, address = item.partition("=")
        if not sep or not name:
            raise ValueError(f"'{item}' is not NAME=IP")
        return {"name": name.strip(), "address": address.strip()}
    return item


def _external_target(item: Any) -> Any:
    if isinstance(item, str):
        name, sep, host = item.partition("=")
        return {"name": name.strip(), "host": host.strip()} if sep else {"host": item.strip()}
    return item


def split_listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{value}' is not HOST:PORT (e.g. :{DEFAULT_PORT})")
    host = host.strip("[]")
    if host and not is_ip(host) and not HOSTNAME.fullmatch(host):
        raise ValueError(f"'{host}' is not an address to listen on")
    return host, int(port)


# -- command line --------------------------------------------------------------


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"invalid command line: {message}")


def flag_for(name: str) -> str:
    field = Settings.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return str(extra.get("flag") or "--" + name.replace("_", "-"))


def env_for(name: str) -> str:
    field = Settings.model_fields[name]
    if isinstance(field.validation_alias, AliasChoices):
        return " or ".join(str(c) for c in field.validation_alias.choices)
    return ENV_PREFIX + name.upper()


def build_parser(prog: str = "node-ping-exporter") -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=prog,
        allow_abbrev=False,  # --check must not start the agent where --check-config checks
        description="Ping every peer node continuously and export per-peer loss and RTT "
        "for Prometheus. Every flag can also be set as NODE_PING_<FLAG> or in --config.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML file with settings (keys = flag names with underscores); env NODE_PING_CONFIG",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the settings (and the peers file) and exit",
    )
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        kwargs: dict[str, Any] = {
            "dest": name,
            "help": f"{field.description} (env {env_for(name)})",
        }
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name in ("peers", "external_targets"):
            kwargs["action"] = "append"
            kwargs["metavar"] = extra.get("metavar")
        elif isinstance(field.annotation, type) and issubclass(field.annotation, Enum):
            kwargs["choices"] = [m.value for m in field.annotation]
        parser.add_argument(flag_for(name), **kwargs)
    return parser


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"invalid setting 'config': cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"invalid setting 'config': {path} is not valid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid setting 'config': {path} must hold a mapping of settings")
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    for key, value in values.items():
        _check_yaml_type(key, value)
    return values


def _check_yaml_type(key: str, value: Any) -> None:
    """In the file, types are the file's own: a list is a list, a number a number, true
    a boolean. (Flags and environment variables are text, parsed by the model; the same
    leniency must not let ``peers: "a=1.2.3.4"`` or ``window: "30"`` through here.)"""
    field = Settings.model_fields.get(key)
    if field is None or value is None:
        return  # unknown keys: the model names them
    annotation = field.annotation
    expected: tuple[type, ...]
    if annotation is bool:
        expected, what = (bool,), "true or false"
    elif annotation is float:
        expected, what = (int, float), "a number"
    elif annotation is int:
        expected, what = (int,), "a whole number"
    elif getattr(annotation, "__origin__", None) is list:
        expected, what = (list,), "a list"
    elif annotation in (str, Path, Path | None) or (
        isinstance(annotation, type) and issubclass(annotation, Enum)
    ):
        expected, what = (str,), "text"
    else:
        return
    if not isinstance(value, expected) or (bool not in expected and isinstance(value, bool)):
        raise ConfigError(
            f"invalid setting '{key}' ({flag_for(key)} / {env_for(key)}) in the config file: "
            f"must be {what}, got {value!r}"
        )


def describe_error(exc: ValidationError) -> str:
    """The first validation error as one line naming the setting and the problem."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    if not loc:  # a check across settings: its message names them
        return str(error["msg"]).removeprefix("Value error, ")
    name = loc[0]
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices) and name in alias.choices:
            name = field_name
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown setting '{name}' in the config file"
    if name in Settings.model_fields:
        where = f"{flag_for(name)} / {env_for(name)}"
        detail = f" (item {int(loc[1]) + 1})" if len(loc) > 1 and loc[1].isdigit() else ""
        got = error.get("input")
        shown = f"; got {got!r}" if isinstance(got, str | int | float) else ""
        return f"invalid setting '{name}'{detail} ({where}): {message}{shown}"
    return f"invalid setting '{name}': {message}"


def load_settings(argv: list[str], environ: dict[str, str]) -> Settings:
    """Settings from argv, the environment and the config file (``--config``)."""
    cli = vars(build_parser().parse_args(argv))
    cli.pop("version", None)
    cli.pop("check_config", None)
    config_path = cli.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    from_file = load_yaml(Path(config_path)) if config_path else {}
    try:
        return Settings(**(from_file | env_values(environ) | cli))
    except ValidationError as exc:
        raise ConfigError(describe_error(exc)) from None


def env_values(environ: dict[str, str]) -> dict[str, str]:
    """The settings set in the environment, as text: NODE_PING_<NAME>, or the names a
    setting lists itself (MY_NODE_NAME, PROMETHEUS_TEXTFILE_DIR…); case does not matter."""
    lowered = {key.lower(): value for key, value in environ.items()}
    values: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = alias.choices if isinstance(alias, AliasChoices) else [ENV_PREFIX + name]
        for env_name in names:
            value = lowered.get(str(env_name).lower())
            if value is not None:
                values[name] = value
                break
    return values

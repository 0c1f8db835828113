"""The alert and recording rules, rendered from their one source.

``node-ping.rules.yml`` (beside this file) starts with a ``config`` mapping:
selectors and windows, kubernetes-mixin's ``_config``. Rendering replaces every
``${…}`` in the rules with its value (the default, or an override) and drops
the mapping, which leaves a file Prometheus loads. The chart does the same from
``prometheusRule.config``; the lab, the tests, ``diagnose`` and
``node-ping-exporter rules`` call :func:`render`.

    node-ping-exporter rules [--set seriesSelector='job="node-exporter"' ...]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import yaml

RULES_FILE = Path(__file__).with_name("node-ping.rules.yml")
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
_CONFIG_BLOCK = re.compile(r"^config:\n(?:(?:[ ]+.*|[ ]*#.*|)\n)*", re.M)
# A window: a Prometheus duration, e.g. 3m or 1m30s.
DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")


class RulesError(ValueError):
    """A config override the rules cannot take; the message names it."""


def source() -> str:
    return RULES_FILE.read_text()


def defaults() -> dict[str, str]:
    """The config mapping at the top of the rules file."""
    config = yaml.safe_load(source())["config"]
    return {str(key): str(value) for key, value in config.items()}


def check(config: Mapping[str, str]) -> dict[str, str]:
    """Defaults with ``config`` applied; unknown keys and values that would break the
    rules (a newline, a selector with braces, a window that is no duration) refused."""
    merged = defaults()
    for key, value in config.items():
        if key not in merged:
            raise RulesError(f"unknown rules setting '{key}' (known: {', '.join(sorted(merged))})")
        if not isinstance(value, str) or "\n" in value:
            raise RulesError(f"rules setting '{key}' must be one line of text")
        if key.endswith("Window") or key == "establishedAfter":
            if not DURATION.fullmatch(value):
                raise RulesError(f"rules setting '{key}': '{value}' is not a duration (e.g. 3m)")
        elif any(c in value for c in "{}"):
            raise RulesError(
                f"rules setting '{key}': give the label matchers without braces, "
                f'e.g. job="node-exporter" (got {value!r})'
            )
        merged[key] = value
    return merged


def render(config: Mapping[str, str] | None = None) -> str:
    """The rules file as Prometheus loads it, with ``config`` over the defaults."""
    values = check(config or {})
    text = _CONFIG_BLOCK.sub("", source(), count=1)
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"node-ping-exporter rules: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> int:
    parser = _Parser(
        prog="node-ping-exporter rules",
        description="Print the alert and recording rules for a Prometheus rule_files entry.",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config value (repeatable): "
        + ", ".join(f"{k} ({v})" for k, v in defaults().items()),
    )
    args = parser.parse_args(argv)
    config: dict[str, str] = {}
    for item in args.set:
        key, equals, value = item.partition("=")
        if not equals:
            parser.error(f"argument --set: '{item}' is not KEY=VALUE")
        config[key] = value
    try:
        print(render(config), end="")
    except RulesError as exc:
        parser.error(str(exc))
    return 0

"""Logging: plain ``key=value`` lines or one JSON object per line.

Structured context goes in ``extra={...}``; both formats print it. Either way
a record is exactly one line: values that come from outside (node names, file
contents, error messages) can hold newlines or terminal escapes, which would
forge or garble log lines, so plain lines escape every control character and
JSON escapes them by itself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from datetime import UTC, datetime

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")


def one_line(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``, ...)."""
    return _CONTROL.sub(_escape, text).encode("utf-8", "backslashreplace").decode()


def _field(value: object) -> str:
    """A field's value, logfmt-style: quoted when it holds a space, '=' or a quote, so a
    value cannot pose as further fields."""
    text = one_line(str(value))
    if text == "" or any(c in text for c in ' ="'):
        return '"' + text.replace('"', '\\"') + '"'
    return text


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: a lone surrogate in a value cannot break the encoding of the line
        return json.dumps(entry, default=str, ensure_ascii=True)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        fields = "".join(f" {k}={_field(v)}" for k, v in _extras(record).items())
        message = one_line(record.getMessage())
        line = f"{stamp}Z {record.levelname.lower():7} {record.name}: {message}{fields}"
        if record.exc_info:
            line += " exception=" + _field(self.formatException(record.exc_info))
        return line


class Throttle:
    """Logs at most one line per kind of event per ``every`` seconds, the next one
    with how many were left out in between: a client decides how many errors there
    are, so it must not decide how much is logged."""

    def __init__(self, logger: logging.Logger, every: float) -> None:
        self.logger = logger
        self.every = every
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # kind -> (logged at, left out since)

    def log(self, level: int, kind: str, msg: str, **fields: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = time.monotonic()
        with self._lock:
            logged_at, left_out = self._last.get(kind, (-self.every, 0))
            if now - logged_at < self.every:
                self._last[kind] = (logged_at, left_out + 1)
                return
            self._last[kind] = (now, 0)
        extra: dict[str, object] = {k: one_line(str(v)) for k, v in fields.items()}
        if left_out:
            extra["suppressed"] = left_out
        self.logger.log(level, msg, extra=extra)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The kubernetes client logs every retry of urllib3 at warning; ours say it once.
    logging.getLogger("urllib3").setLevel(logging.ERROR)

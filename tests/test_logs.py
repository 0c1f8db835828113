"""A log record is one line in either format, whatever text from outside it carries
(defect 14): a name or message with a newline cannot forge a second record, and
terminal escapes are shown, not obeyed."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from exporter.logs import JsonFormatter, PlainFormatter, one_line

FORGED = "peer-a\n2026-12-01T00:00:00.000Z info    exporter.app: all good\x1b[2J"


def record(message: str, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("exporter.test", logging.WARNING, __file__, 1, message, None, None)
    entry.__dict__.update(extra)
    return entry


def test_plain_lines_escape_newlines_and_control_characters() -> None:
    line = PlainFormatter().format(record(f"cannot read {FORGED}", target=FORGED, n=3))
    assert "\n" not in line and "\x1b" not in line
    assert "peer-a\\n2026-12-01T00:00:00.000Z" in line and "\\x1b[2J" in line
    assert line.endswith("n=3")


def test_plain_exceptions_stay_on_the_line() -> None:
    try:
        raise ValueError(FORGED)
    except ValueError:
        entry = record("failed")
        entry.exc_info = sys.exc_info()
    line = PlainFormatter().format(entry)
    assert "\n" not in line and 'exception="Traceback' in line and "ValueError: peer-a\\n" in line


@pytest.mark.parametrize("value", [FORGED, "lone \udcff surrogate", "\u2028line separator"])
def test_json_lines_are_one_valid_object(value: str) -> None:
    line = JsonFormatter().format(record(value, target=value))
    assert "\n" not in line and "\u2028" not in line
    entry = json.loads(line)
    assert entry["msg"] == value and entry["target"] == value


def test_one_line_keeps_printable_text() -> None:
    assert one_line("node-1 → node-2: 30 % loss") == "node-1 → node-2: 30 % loss"
    assert one_line("a\r\nb\tc\x00") == "a\\r\\nb\\tc\\x00"
    assert one_line("bad \udcff") == "bad \\udcff"


def test_a_value_cannot_pose_as_more_fields() -> None:
    line = PlainFormatter().format(record("resolved", target="x problem=resolved", n=3))
    assert line.endswith(' target="x problem=resolved" n=3')
    line = PlainFormatter().format(record("ok", target='say "hi"', empty=""))
    assert 'target="say \\"hi\\""' in line and 'empty=""' in line

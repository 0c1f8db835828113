"""The metric contract: docs/metrics.md, exporter/metric_table.py and what the agent
really renders (the golden exposition) name the same families, types and labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from exporter.metric_table import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `([a-z_]+)` \| (counter|gauge|histogram)[^|]* \| ([^|]*) \|")


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (type, labels) from every table row of docs/metrics.md."""
    out = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            name, kind, labels = match.groups()
            assert name not in out, f"{name} is documented twice"
            out[name] = (kind, tuple(re.findall(r"`([a-z_]+)`(?: \([^)]*\))?", labels)))
    return out


def test_every_family_is_documented_with_its_type_and_labels() -> None:
    declared = {f.name: (f.type, f.labels) for f in FAMILIES}
    assert len(declared) == len(FAMILIES), "a family is declared twice"
    assert documented() == declared


def test_counters_end_in_total_and_nothing_else_does() -> None:
    for family in FAMILIES:
        assert family.name.endswith("_total") == (family.type == "counter"), family.name


def test_the_agent_renders_exactly_the_declared_families() -> None:
    text = (ROOT / "tests" / "golden" / "metrics-per-peer-histogram.prom").read_text()
    rendered = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k not in ("le",)}
        rendered[name] = (family.type, labels)
    declared = {f.name: (f.type, set(f.labels)) for f in FAMILIES}
    # Families with no series in the scripted run still render their HELP/TYPE.
    assert set(rendered) == set(declared)
    for name, (kind, labels) in rendered.items():
        assert kind == declared[name][0], name
        assert labels <= declared[name][1], name

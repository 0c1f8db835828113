"""Grafana dashboards (dashboards/*.json): the JSON model, the queries' conventions, and
every PromQL expression parsed by promtool with the variables substituted. The lab e2e
runs the same expressions against a real Prometheus with a fault injected."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT

DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
UIDS = {
    "node-connectivity.json": "node-ping-connectivity",
    "external-targets.json": "node-ping-external",
}
# Test values for the dashboard variables (what Grafana substitutes before querying).
VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "${datasource}": "prometheus",
    "$job": ".+",
    "$source_node": ".+",
    "$destination_node": ".+",
    "$destination_name": ".+",
}


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold theirs


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


def without_data(
    query: Callable[[str], list[Any]], substitute: Callable[[str], str], names: Iterable[str]
) -> list[str]:
    """The queries of the dashboards ``names`` that return nothing from a Prometheus, as
    "dashboard: panel: query". The error panels are left out: they have no series while
    nothing fails."""
    empty = []
    for name in names:
        for title, target in queries(load(ROOT / "dashboards" / name)):
            expr = substitute(target["expr"])
            if "send_errors" not in expr and "resolve_errors" not in expr and not query(expr):
                empty.append(f"{name}: {title}: {expr}")
    return empty


def all_expressions() -> list[str]:
    return [substitute(t["expr"]) for path in DASHBOARDS for _, t in queries(load(path))]


def test_the_expected_dashboards_exist() -> None:
    assert {p.name for p in DASHBOARDS} == set(UIDS)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_json_model(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"] == UIDS[path.name]  # stable: links and bookmarks use it
    assert dashboard["schemaVersion"] >= 36 and dashboard["title"]
    assert "node-ping-exporter" in dashboard["tags"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        assert panel["type"] != "graph", f"{panel['title']}: the deprecated graph panel"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["source_node"]["multi"] and variables["source_node"]["includeAll"]
    other = next(uid for name, uid in UIDS.items() if name != path.name)
    assert any(link.get("url") == f"/d/{other}" for link in dashboard["links"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_query_conventions(path: Path) -> None:
    """$__rate_interval in range queries, $__range in instant ones; RTT means divide by
    packets received, never sent; no increase() on gauges."""
    for title, target in queries(load(path)):
        expr = target["expr"]
        windows = re.findall(r"\[([^\]]+)\]", expr)
        if target.get("instant"):
            assert all(w == "$__range" for w in windows), (title, expr)
        else:
            assert all(w == "$__rate_interval" for w in windows), (title, expr)
        if "rtt_milliseconds_total" in expr and "/" in expr:
            assert "packets_sent_total" not in expr, (title, expr)
        for gauge in re.findall(r"(?:increase|rate)\((\w+)", expr):
            assert gauge.endswith(("_total", "_bucket")), (title, gauge)


def test_every_panel_has_its_variables_applied() -> None:
    for path in DASHBOARDS:
        for title, target in queries(load(path)):
            assert "$job" in target["expr"], (title, target["expr"])
            assert "$source_node" in target["expr"], (title, target["expr"])


def test_loss_matrix_is_source_by_destination() -> None:
    dashboard = load(ROOT / "dashboards" / "node-connectivity.json")
    matrix = dashboard["panels"][0]
    assert matrix["type"] == "table" and "matrix" in matrix["title"].lower()
    (transformation,) = matrix["transformations"]
    assert transformation["id"] == "groupingToMatrix"
    assert transformation["options"]["rowField"] == "source_node"
    assert transformation["options"]["columnField"] == "destination_node"
    assert matrix["targets"][0]["instant"] is True


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool parses each expression (as a recording rule: it has no bare PromQL check)."""
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": expr}
                    for i, expr in enumerate(all_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr

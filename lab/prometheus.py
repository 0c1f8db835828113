"""Prometheus and node-exporter in the lab's hub, configured as the chart configures them.

Prometheus scrapes every agent (job ``node-ping-exporter``, ``instance`` set to
the node, as the chart relabels it) and node-exporter, which reads the agents'
textfiles; it loads the repository's alert rules, or a copy with lab-sized
windows (:func:`fast_rules`). Both listen on the hub's loopback, so the lab adds
nothing to the host's network; the lab reads them from inside the hub.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .agents import listen_address
from .network import Network
from .state import LabError, LabState, Workdir

PROMETHEUS = "127.0.0.1:9090"
NODE_EXPORTER = "127.0.0.1:9100"


def fast_rules(text: str) -> str:
    """The rules with lab-sized windows: rates over 30 s, pairs established after 1 min,
    every `for` 20 s. Recorded series keep their names."""
    text = text.replace("[5m]", "[30s]").replace("offset 10m", "offset 1m")
    return re.sub(r"^(\s+)for: \S+$", r"\1for: 20s", text, flags=re.M)


@dataclass(frozen=True)
class HubPrometheus:
    """Start the lab's Prometheus and node-exporter, and query them."""

    workdir: Workdir
    network: Network

    def start(self, state: LabState) -> None:
        """Configuration written, both started; their pids go into ``state.services``."""
        config_file = self._write_config(state)
        for tool in ("prometheus", "prometheus-node-exporter"):
            if shutil.which(tool) is None:
                raise LabError(f"'{tool}' is not installed (apt-get install {tool})")
        hub = self.network.hub
        state.services["node-exporter"] = self.workdir.spawn(
            hub.cmd("prometheus-node-exporter", f"--web.listen-address={NODE_EXPORTER}",
                    "--collector.disable-defaults", "--collector.textfile",
                    f"--collector.textfile.directory={self.workdir.textfile_dir}"),
            "node-exporter.log",
        )  # fmt: skip
        state.services["prometheus"] = self.workdir.spawn(
            hub.cmd("prometheus", f"--config.file={config_file}",
                    f"--storage.tsdb.path={self.workdir.path / 'prometheus'}",
                    f"--web.listen-address={PROMETHEUS}", "--log.level=warn"),
            "prometheus.log",
        )  # fmt: skip

    def _write_config(self, state: LabState) -> Path:
        """prometheus.yml, the agents' file_sd targets and the rules it loads."""
        targets_file = self.workdir.path / "targets.json"
        targets = [
            {"targets": [listen_address(state.config, node)], "labels": {"node": node}}
            for node in state.config.node_names()
        ]
        targets_file.write_text(json.dumps(targets, indent=1))
        rules_file = Path(state.config.rules_file)
        if state.config.fast_alerts and rules_file.exists():
            fast = self.workdir.path / "fast.rules.yml"
            fast.write_text(fast_rules(rules_file.read_text()))
            rules_file = fast
        config = {
            "global": {
                "scrape_interval": state.config.scrape_interval,
                "evaluation_interval": state.config.scrape_interval,
            },
            "rule_files": [str(rules_file)] if rules_file.exists() else [],
            "scrape_configs": [
                {
                    "job_name": "node-ping-exporter",  # as the chart relabels it
                    "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
                    "relabel_configs": [{"source_labels": ["node"], "target_label": "instance"}],
                },
                {"job_name": "node-exporter", "static_configs": [{"targets": [NODE_EXPORTER]}]},
            ],
        }
        config_file = self.workdir.path / "prometheus.yml"
        config_file.write_text(json.dumps(config, indent=1))
        return config_file

    def ready_urls(self) -> set[str]:
        return {f"http://{PROMETHEUS}/-/ready", f"http://{NODE_EXPORTER}/metrics"}

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """A PromQL instant query against the lab's Prometheus; the result vector."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        url = f"http://{PROMETHEUS}/api/v1/query?{urlencode(params)}"
        status, body = self.network.http_get(url)
        data = json.loads(body) if body else {}
        if status != 200 or data.get("status") != "success":
            raise LabError(f"query failed ({status}): {data.get('error', body[:200])}: {expr}")
        return list(data["data"]["result"])

    def node_exporter_metrics(self) -> str:
        return self.network.http_get(f"http://{NODE_EXPORTER}/metrics")[1]

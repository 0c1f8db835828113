"""Prometheus and node-exporter in the lab's hub, configured as the chart configures them.

Prometheus scrapes every agent (job ``node-ping-exporter``, ``instance`` set to
the node, as the chart relabels it; not with ``--output textfile``, where the
series come through node-exporter only, as in such a cluster) and node-exporter,
which reads the agents' textfiles. It loads the project's rules rendered as the
chart renders them for that output mode, or with lab-sized windows
(:func:`fast_rules`). Both listen on the hub's loopback, so the lab adds
nothing to the host's network; the lab reads them from inside the hub.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from exporter import rules

from .agents import listen_address
from .network import Network
from .process import write_atomically
from .state import LabConfig, LabError, LabState, Workdir

PROMETHEUS = "127.0.0.1:9090"
NODE_EXPORTER = "127.0.0.1:9100"


# Lab-sized windows for a 5 s scrape: what takes minutes with the shipped rules
# takes tens of seconds.
FAST_CONFIG = {"lossWindow": "30s", "latestWindow": "15s", "establishedAfter": "1m",
               "outageWindow": "2m"}  # fmt: skip
FAST_FOR = "15s"


def rules_config(output: str) -> dict[str, str]:
    """The rules' config for the agents' output mode, as the chart sets it."""
    return {"seriesSelector": 'job="node-exporter"'} if output == "textfile" else {}


def fast_rules(output: str) -> str:
    """The rules with lab-sized windows (FAST_CONFIG) and every `for` at FAST_FOR."""
    text = rules.render(rules_config(output) | FAST_CONFIG)
    return re.sub(r"^(\s+)for: \S+$", rf"\1for: {FAST_FOR}", text, flags=re.M)


def fast_alert_overrides() -> dict[str, dict[str, str]]:
    """Every alert's `for` at FAST_FOR, as the chart's ``prometheusRule.alerts`` sets it."""
    names = re.findall(r"^\s+- alert: (\S+)$", rules.render({}), flags=re.M)
    return {name: {"for": FAST_FOR} for name in names}


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
        targets_file = self.write_targets(state)
        rules_file = self.workdir.path / "node-ping.rules.yml"
        rules_file.write_text(self.rules_text(state.config))
        output = state.config.output
        agents_job = {
            "job_name": "node-ping-exporter",  # as the chart relabels it
            "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
            "relabel_configs": [{"source_labels": ["node"], "target_label": "instance"}],
        }
        config = {
            "global": {
                "scrape_interval": state.config.scrape_interval,
                "evaluation_interval": state.config.scrape_interval,
            },
            "rule_files": [str(rules_file)],
            "scrape_configs": [
                *([agents_job] if output != "textfile" else []),
                {"job_name": "node-exporter", "static_configs": [{"targets": [NODE_EXPORTER]}]},
            ],
        }
        config_file = self.workdir.path / "prometheus.yml"
        config_file.write_text(json.dumps(config, indent=1))
        return config_file

    def write_targets(self, state: LabState) -> Path:
        """The agents to scrape (file_sd, re-read within 5 s): every node still in the
        cluster, as a DaemonSet's pods are; a removed node's agent is no target."""
        targets_file = self.workdir.path / "targets.json"
        targets = [
            {"targets": [listen_address(state.config, node)], "labels": {"node": node}}
            for node in state.config.node_names()
            if node not in state.removed
        ]
        write_atomically(targets_file, json.dumps(targets, indent=1))
        return targets_file

    @staticmethod
    def rules_text(config: LabConfig) -> str:
        """The rules this lab's Prometheus runs: as the chart renders them for the
        agents' output mode, with lab-sized windows when the lab wants fast alerts."""
        if config.fast_alerts:
            return fast_rules(config.output)
        return rules.render(rules_config(config.output))

    def load_rules(self, text: str) -> None:
        """Replace the rules Prometheus runs (a SIGHUP reloads them), e.g. with the rules
        as the chart renders them for some values."""
        state = self.workdir.load()
        (self.workdir.path / "node-ping.rules.yml").write_text(text)
        os.kill(state.services["prometheus"], signal.SIGHUP)

    def address(self) -> str:
        """Where the lab's Prometheus answers, seen from the hub: on the hub's loopback, or
        on a lab of Kubernetes nodes the operator's, on the first node's address."""
        config = self.workdir.load().config
        if config.kubelets:
            return f"{config.addresses(config.node_names()[0])[0]}:9090"
        return PROMETHEUS

    def ready_urls(self) -> set[str]:
        return {f"http://{self.address()}/-/ready", f"http://{NODE_EXPORTER}/metrics"}

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """A PromQL instant query against the lab's Prometheus; the result vector.

        POSTed, the expression on curl's stdin: diagnose's inline rules are far
        longer than a URL or a command-line argument may be."""
        form = urlencode({"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})})
        url = f"http://{self.address()}/api/v1/query"
        out = self.network.hub.run(
            "curl", "-s", "-m", "60", "--data-binary", "@-", "-w", "\n%{http_code}", url,
            check=False, input=form,
        )  # fmt: skip
        body, _, code = out.rpartition("\n")
        data = json.loads(body) if body.startswith("{") else {}
        if code != "200" or data.get("status") != "success":
            raise LabError(f"query failed ({code}): {data.get('error', body[:200])}: {expr[:200]}")
        return list(data["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Prometheus holds now (pending and firing), with their annotations."""
        status, body = self.network.http_get(f"http://{self.address()}/api/v1/alerts")
        data = json.loads(body) if body.startswith("{") else {}
        if status != 200 or data.get("status") != "success":
            raise LabError(f"alerts failed ({status}): {body[:200]}")
        return list(data["data"]["alerts"])

    def node_exporter_metrics(self) -> str:
        return self.network.http_get(f"http://{NODE_EXPORTER}/metrics")[1]

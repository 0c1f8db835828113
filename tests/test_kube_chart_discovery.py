"""Out of the box next to kube-prometheus-stack, on a real control plane of its own
(etcd + kube-apiserver + kube-controller-manager, lab/controlplane.py), which starts
without the Prometheus Operator CRDs: a plain ``helm install`` with no values creates
monitors and the rule only where the cluster serves their kinds, labels and places
them so that the cluster's ``Prometheus`` objects select them, puts the dashboards
where a Grafana sidecar loads them, and says all of it in NOTES.txt.

What NOTES claims is checked against the API server's own label-selector evaluation:
each Prometheus object's selectors, turned into label-selector strings, are asked of
the API server (list the monitors, list the namespaces). The Prometheus and Grafana
objects are shaped like kube-prometheus-stack 88's (``release: <name>`` selectors,
namespace selectors ``{}``; Grafana's ``grafana-sc-dashboard`` sidecar with
``NAMESPACE=ALL``); nothing runs them here — the chart reads objects, and that the
real operator then scrapes and loads what it selected is tests/test_kubelet_cluster.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from lab.controlplane import ControlPlane, unavailable
from lab.operator import CRDS, install_crds

from .conftest import ROOT

pytestmark = pytest.mark.e2e

CHART = str(ROOT / "chart")
NAMESPACE = "kube-prometheus"
GROUP = "monitoring.coreos.com"
KPS = "kube-prometheus-stack"  # the release name kube-prometheus-stack was installed as
PLURALS = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules",
           "PodMonitor": "podmonitors"}  # fmt: skip
FIELDS = {"ServiceMonitor": "serviceMonitor", "PodMonitor": "podMonitor", "PrometheusRule": "rule"}


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    """A control plane of this module's own: it has to start without the CRDs."""
    why = unavailable()
    if why:
        pytest.skip(f"no Kubernetes control plane: {why}")
    if not CRDS.is_dir():  # ../shared/crds lacks the Prometheus kind
        pytest.skip(f"{CRDS} is missing (the operator release's CRDs: make deps builds them)")
    plane = ControlPlane(f"d{os.getpid()}")
    plane.up(controller_manager=False)
    try:
        yield plane
    finally:
        plane.down()


def helm(plane: ControlPlane, verb: str, release: str, *args: str, binary: str = "helm3") -> str:
    """``helm install|upgrade`` of the chart with no values but ``args``; NOTES.txt
    with each line's whitespace folded."""
    out = plane.helm(verb, release, CHART, "-n", NAMESPACE, "--create-namespace", *args,
                     helm=binary)  # fmt: skip
    return "\n".join(" ".join(line.split()) for line in out.splitlines())


def manifest_kinds(plane: ControlPlane, release: str) -> dict[str, list[tuple[str, str]]]:
    """Kind → (namespace, name) of what the release's manifest holds."""
    import yaml

    kinds: dict[str, list[tuple[str, str]]] = {}
    for doc in yaml.safe_load_all(plane.helm("get", "manifest", release, "-n", NAMESPACE)):
        if doc:
            meta = doc["metadata"]
            kinds.setdefault(doc["kind"], []).append((meta.get("namespace", ""), meta["name"]))
    return kinds


def notes_section(notes: str, kind: str) -> tuple[str, set[str], set[str]]:
    """From NOTES: the header line of ``kind``'s object, and the Prometheus objects it
    says will pick it up and will not."""
    lines = notes.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(f"{kind} ")]
    picked, missed = set(), set()
    for line in lines[start + 1 :]:
        if m := re.match(r"Picked up by Prometheus (\S+)\.$", line):
            picked.add(m[1])
        elif m := re.match(r"Not by Prometheus (\S+?): ", line):
            missed.add(m[1])
        else:
            break
    return lines[start], picked, missed


def selector_string(selector: dict[str, Any]) -> str:
    """A LabelSelector as the API server's label_selector query parameter."""
    terms = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for e in selector.get("matchExpressions") or []:
        values = ",".join(e.get("values") or [])
        key = e["key"]
        terms.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[e["operator"]])  # fmt: skip
    return ",".join(terms)


def api_selects(plane: ControlPlane, prometheus: dict[str, Any], kind: str, where: str,
                name: str) -> bool:  # fmt: skip
    """Does the API server, asked with ``prometheus``'s selectors, return the ``kind``
    object ``where/name`` (the operator's own way of finding what it loads)?"""
    from kubernetes import client

    spec, field = prometheus["spec"], FIELDS[kind]
    selector = spec.get(f"{field}Selector")
    if selector is None:
        return False
    namespaces = spec.get(f"{field}NamespaceSelector")
    if namespaces is None:
        if where != prometheus["metadata"]["namespace"]:
            return False
    else:
        core: Any = client.CoreV1Api(plane.api_client())
        listed = core.list_namespace(label_selector=selector_string(namespaces)).items
        if where not in {n.metadata.name for n in listed}:
            return False
    custom: Any = client.CustomObjectsApi(plane.api_client())
    found = custom.list_namespaced_custom_object(
        GROUP, "v1", where, PLURALS[kind], label_selector=selector_string(selector)
    )["items"]
    return name in {o["metadata"]["name"] for o in found}


def create_prometheus(
    plane: ControlPlane, namespace: str, name: str, **spec: Any
) -> dict[str, Any]:
    from kubernetes import client

    core: Any = client.CoreV1Api(plane.api_client())
    if namespace not in {n.metadata.name for n in core.list_namespace().items}:
        core.create_namespace({"metadata": {"name": namespace}})
    body = {"apiVersion": f"{GROUP}/v1", "kind": "Prometheus",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip
    custom: Any = client.CustomObjectsApi(plane.api_client())
    custom.create_namespaced_custom_object(GROUP, "v1", namespace, "prometheuses", body)
    return body


def delete_prometheuses(plane: ControlPlane, *bodies: dict[str, Any]) -> None:
    from kubernetes import client

    custom: Any = client.CustomObjectsApi(plane.api_client())
    for body in bodies:
        meta = body["metadata"]
        custom.delete_namespaced_custom_object(GROUP, "v1", meta["namespace"], "prometheuses",
                                               meta["name"])  # fmt: skip


def kube_prometheus_stack_prometheus(plane: ControlPlane) -> dict[str, Any]:
    """The Prometheus object kube-prometheus-stack 88 renders with its default values."""
    release = {"matchLabels": {"release": KPS}}
    return create_prometheus(
        plane, NAMESPACE, f"{KPS}-prometheus",
        serviceMonitorSelector=release, podMonitorSelector=release, probeSelector=release,
        ruleSelector=release, scrapeConfigSelector=release, serviceMonitorNamespaceSelector={},
        podMonitorNamespaceSelector={}, probeNamespaceSelector={}, ruleNamespaceSelector={},
        scrapeConfigNamespaceSelector={},
    )  # fmt: skip


def create_grafana(plane: ControlPlane, namespace: str, name: str, env: dict[str, str]) -> None:
    """A Deployment shaped like the grafana chart's: grafana and its dashboards sidecar
    (kiwigrid k8s-sidecar) with ``env``. Nothing schedules it: the chart only reads it."""
    from kubernetes import client

    apps: Any = client.AppsV1Api(plane.api_client())
    labels = {"app.kubernetes.io/name": "grafana", "app.kubernetes.io/instance": name}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                {"name": "grafana-sc-dashboard", "image": "quay.io/kiwigrid/k8s-sidecar:2.10.1",
                 "env": [{"name": k, "value": v} for k, v in env.items()]},
                {"name": "grafana-sc-datasources", "image": "quay.io/kiwigrid/k8s-sidecar:2.10.1",
                 "env": [{"name": "LABEL", "value": "grafana_datasource"}]},
                {"name": "grafana", "image": "docker.io/grafana/grafana:13.2.0"},
            ]}},
        },
    })  # fmt: skip


def objects(plane: ControlPlane, kind: str, release: str) -> list[dict[str, Any]]:
    """The release's ``kind`` objects in every namespace, as the API server has them."""
    from kubernetes import client

    custom: Any = client.CustomObjectsApi(plane.api_client())
    return list(
        custom.list_cluster_custom_object(
            GROUP, "v1", PLURALS[kind], label_selector=f"app.kubernetes.io/instance={release}"
        )["items"]
    )


@pytest.mark.parametrize("binary", ["helm3", "helm4"])
def test_without_the_crds_the_install_succeeds_and_says_why(
    plane: ControlPlane, binary: str
) -> None:
    """No CRDs: the install succeeds with agents and dashboards, no monitors, and NOTES
    says why and what nobody scrapes."""
    if not (ROOT / ".cache" / "bin" / binary).exists():
        pytest.skip(f"{binary} is not built (scripts/install-tools.sh)")
    release = f"bare-{binary}"
    notes = helm(plane, "install", release, binary=binary)
    kinds = manifest_kinds(plane, release)
    assert "DaemonSet" in kinds and len(kinds["ConfigMap"]) == 3  # settings + 2 dashboards
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Service"} & set(kinds)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert (f"No {kind}: the cluster does not serve monitoring.coreos.com/v1 {kind} "
                "(no Prometheus Operator CRDs).") in notes  # fmt: skip
    assert "Nothing makes Prometheus scrape the agents" in notes
    assert "No cluster to look at" not in notes
    assert f"ConfigMaps in {NAMESPACE} labelled grafana_dashboard=1." in notes
    assert "No Grafana dashboard sidecar found here" in notes
    plane.helm("uninstall", release, "-n", NAMESPACE, helm=binary)


def test_kube_prometheus_stack_installed_later_is_picked_up_by_the_next_upgrade(
    plane: ControlPlane,
) -> None:
    """Installed on a bare cluster; kube-prometheus-stack arrives (CRDs, its Prometheus
    and Grafana); a plain ``helm upgrade`` creates the monitor and the rule with its
    release label, and NOTES names the Prometheus and the Grafana that load them."""
    from kubernetes import client

    release = "later"
    helm(plane, "install", release)
    assert not {"ServiceMonitor", "PrometheusRule"} & set(manifest_kinds(plane, release))

    install_crds(plane, CRDS, timeout=30)
    prometheus = kube_prometheus_stack_prometheus(plane)
    sidecar = {"METHOD": "WATCH", "LABEL": "grafana_dashboard", "LABEL_VALUE": "1",
               "FOLDER": "/tmp/dashboards", "RESOURCE": "both", "NAMESPACE": "ALL"}  # fmt: skip
    create_grafana(plane, NAMESPACE, f"{KPS}-grafana", sidecar)
    notes = helm(plane, "upgrade", release)

    kinds = manifest_kinds(plane, release)
    name = f"{release}-node-ping-exporter"
    assert kinds["ServiceMonitor"] == [(NAMESPACE, name)]
    assert kinds["PrometheusRule"] == [(NAMESPACE, name)]
    assert "PodMonitor" not in kinds  # one way of scraping by default, not two
    for kind in ("ServiceMonitor", "PrometheusRule"):
        (live,) = objects(plane, kind, release)
        assert live["metadata"]["labels"]["release"] == KPS
        assert api_selects(plane, prometheus, kind, NAMESPACE, name)
        header, picked, missed = notes_section(notes, kind)
        assert header.startswith(f"{kind} {NAMESPACE}/{name} labelled release={KPS} ")
        assert (picked, missed) == ({f"{NAMESPACE}/{KPS}-prometheus"}, set())
    assert "Nothing makes Prometheus scrape" not in notes
    grafana = f"{NAMESPACE}/{KPS}-grafana"
    assert f"Loaded by the Grafana sidecar of {grafana} (grafana-sc-dashboard)." in notes
    uid = json.loads((ROOT / "dashboards" / "node-connectivity.json").read_text())["uid"]
    assert (f"kubectl -n {NAMESPACE} port-forward deploy/{KPS}-grafana 3000:3000\n"
            f"http://localhost:3000/d/{uid}.") in notes  # fmt: skip
    assert (f"exec ds/{name} -- node-ping-exporter diagnose --prometheus "
            f"http://prometheus-operated.{NAMESPACE}.svc:9090") in notes  # fmt: skip

    # Forced off by value, the objects go; values' labels win over discovered ones.
    notes = helm(plane, "upgrade", release, "--set", "prometheusRule.enabled=false",
                 "--set", "serviceMonitor.labels.release=mine")  # fmt: skip
    assert "PrometheusRule" not in manifest_kinds(plane, release)
    assert "No PrometheusRule: prometheusRule.enabled=false." in notes
    header, picked, missed = notes_section(notes, "ServiceMonitor")
    assert "labelled release=mine " in header and not picked
    assert missed == {f"{NAMESPACE}/{KPS}-prometheus"}
    assert (f"Not by Prometheus {NAMESPACE}/{KPS}-prometheus: its serviceMonitorSelector "
            f"needs release={KPS}.") in notes  # fmt: skip
    assert not api_selects(plane, prometheus, "ServiceMonitor", NAMESPACE, name)
    assert "No Prometheus in the cluster will pick it up." in notes
    plane.helm("uninstall", release, "-n", NAMESPACE)
    delete_prometheuses(plane, prometheus)
    client.AppsV1Api(plane.api_client()).delete_namespaced_deployment(f"{KPS}-grafana", NAMESPACE)


def test_selectors_of_every_shape(plane: ControlPlane) -> None:
    """Prometheus objects selecting everything, by expressions, in their own namespace
    only, by namespace labels, by a NotIn that contradicts another: the monitor and rule
    get the labels and namespace that satisfy what can be satisfied, and for each
    object NOTES says what the API server's own selector evaluation says."""
    from kubernetes import client

    install_crds(plane, CRDS, timeout=30)
    core: Any = client.CoreV1Api(plane.api_client())
    kps = kube_prometheus_stack_prometheus(plane)
    everything = create_prometheus(plane, "everything", "all", serviceMonitorSelector={},
                                   ruleSelector={}, serviceMonitorNamespaceSelector={},
                                   ruleNamespaceSelector={})  # fmt: skip
    expressions = create_prometheus(
        plane, "team", "network",
        serviceMonitorSelector={"matchExpressions": [
            {"key": "team", "operator": "In", "values": ["network", "platform"]},
            {"key": "tier", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"}]},
        serviceMonitorNamespaceSelector={"matchLabels": {"monitoring": "team"}},
    )  # fmt: skip
    contrary = create_prometheus(
        plane, "other", "contrary",
        serviceMonitorSelector={"matchExpressions": [
            {"key": "release", "operator": "NotIn", "values": [KPS]}]},
        serviceMonitorNamespaceSelector={}, ruleSelector={"matchLabels": {"x": "y"}},
    )  # fmt: skip
    release = "shapes"
    name = f"{release}-node-ping-exporter"
    everyone = [kps, everything, expressions, contrary]

    def check(notes: str, kind: str, where: str, selected: set[str]) -> None:
        """``kind`` is in ``where``, picked up by exactly ``selected`` per NOTES and per
        the API server; every other Prometheus is listed with a reason."""
        header, picked, missed = notes_section(notes, kind)
        assert header.startswith(f"{kind} {where}/{name}"), header
        by_api = {f"{p['metadata']['namespace']}/{p['metadata']['name']}"
                  for p in everyone if api_selects(plane, p, kind, where, name)}  # fmt: skip
        assert picked == by_api == selected, (kind, picked, by_api)
        assert missed == {f"{p['metadata']['namespace']}/{p['metadata']['name']}"
                          for p in everyone} - selected  # fmt: skip

    notes = helm(plane, "install", release, binary="helm4")
    (monitor,) = objects(plane, "ServiceMonitor", release)
    labels = monitor["metadata"]["labels"]
    # kube-prometheus-stack's release label, and nothing for the expressions' object
    # (its namespace selector accepts no namespace the chart could use).
    assert labels["release"] == KPS and "team" not in labels
    check(notes, "ServiceMonitor", NAMESPACE, {f"{NAMESPACE}/{KPS}-prometheus", "everything/all"})
    assert ("Not by Prometheus team/network: its serviceMonitorNamespaceSelector needs "
            "monitoring=team, which namespace kube-prometheus lacks.") in notes  # fmt: skip
    assert ("Not by Prometheus other/contrary: its serviceMonitorSelector needs "
            f"release NotIn {KPS}.") in notes  # fmt: skip
    check(notes, "PrometheusRule", NAMESPACE, {f"{NAMESPACE}/{KPS}-prometheus", "everything/all"})
    # The contrary one wants rules labelled x=y, which contradicts nothing, but in its
    # own namespace only (ruleNamespaceSelector unset), and the others accept no other.
    assert ("Not by Prometheus other/contrary: it looks for rules in its own namespace "
            "other only (ruleNamespaceSelector unset).") in notes  # fmt: skip
    (rule,) = objects(plane, "PrometheusRule", release)
    assert "x" not in rule["metadata"]["labels"]
    assert ("Not by Prometheus team/network: its ruleSelector is unset, so it selects no "
            "PrometheusRule.") in notes  # fmt: skip

    # The namespace gets the label that team's Prometheus wants: the next upgrade
    # satisfies its expressions too (In: the first value; Exists: "true").
    core.patch_namespace(NAMESPACE, {"metadata": {"labels": {"monitoring": "team"}}})
    notes = helm(plane, "upgrade", release, binary="helm4")
    (monitor,) = objects(plane, "ServiceMonitor", release)
    labels = monitor["metadata"]["labels"]
    assert (labels["team"], labels["tier"], "legacy" in labels) == ("network", "true", False)
    check(notes, "ServiceMonitor", NAMESPACE,
          {f"{NAMESPACE}/{KPS}-prometheus", "everything/all", "team/network"})  # fmt: skip

    # Only a Prometheus that looks in its own namespace: the monitor and rule go there.
    delete_prometheuses(plane, kps, everything, expressions, contrary)
    own = create_prometheus(plane, "monitoring", "own",
                            serviceMonitorSelector={"matchLabels": {"prometheus": "own"}},
                            ruleSelector={})  # fmt: skip
    everyone = [own]
    create_grafana(plane, "monitoring", "grafana", {"LABEL": "grafana_dashboard"})
    notes = helm(plane, "upgrade", release, binary="helm4")
    check(notes, "ServiceMonitor", "monitoring", {"monitoring/own"})
    check(notes, "PrometheusRule", "monitoring", {"monitoring/own"})
    (monitor,) = objects(plane, "ServiceMonitor", release)
    assert monitor["metadata"]["labels"]["prometheus"] == "own"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The grafana chart's default sidecar watches its own namespace only (no NAMESPACE):
    # the dashboards go there.
    assert "ConfigMaps in monitoring labelled grafana_dashboard=1." in notes
    assert "Loaded by the Grafana sidecar of monitoring/grafana (grafana-sc-dashboard)." in notes
    dashboards = core.list_namespaced_config_map(
        "monitoring", label_selector=f"grafana_dashboard=1,app.kubernetes.io/instance={release}"
    ).items
    assert len(dashboards) == 2
    # With TLS the monitor refers to a Secret in the release namespace, which the
    # operator reads from the monitor's own: it stays, and NOTES says how to move it.
    notes = helm(plane, "upgrade", release, "--set", "metrics.tls.enabled=true",
                 "--set", "metrics.tls.secretName=npe-tls", binary="helm4")  # fmt: skip
    check(notes, "ServiceMonitor", NAMESPACE, set())
    assert ("Kept in kube-prometheus, where the Secrets it refers to are: Prometheus in "
            "monitoring looks\nthere only.") in notes  # fmt: skip
    check(notes, "PrometheusRule", "monitoring", {"monitoring/own"})
    plane.helm("uninstall", release, "-n", NAMESPACE)
    delete_prometheuses(plane, own)

"""Security scan of the rendered chart (checkov): every finding is an accepted one,
listed with its reason in chart/README.md, and only in the configurations it belongs to."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_chart import (
    AUTH,
    CLIENT_AUTH,
    FILE_DISCOVERY,
    HELM3,
    MONITORS,
    TLS,
    helm_template,
    sets,
)

CHECKOV = ROOT / ".cache" / "checkov" / "bin" / "checkov"
ALWAYS = {"CKV_K8S_19", "CKV_K8S_11", "CKV_K8S_38", "CKV_K8S_43", "CKV_K8S_15", "CKV2_K8S_6"}
ROOT_WITH_NET_RAW = {"CKV_K8S_23", "CKV_K8S_40", "CKV_K8S_25"}
PRIVILEGED_INIT = {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_23", "CKV_K8S_40"}
TEXTFILE_INIT = {"CKV_K8S_25"}  # CHOWN and FOWNER, unprivileged mode with textfile output

CONFIGURATIONS: dict[str, tuple[list[str], set[str]]] = {
    "defaults, all objects": (
        sets(
            "serviceMonitor.enabled=true",
            "podMonitor.enabled=true",
            "prometheusRule.enabled=true",
            "dashboards.enabled=true",
            "output=both",
        ),
        ALWAYS | TEXTFILE_INIT,
    ),
    "textfile, directory prepared on the nodes": (
        sets("output=textfile", "textfile.setPermissions=false"),
        ALWAYS,
    ),
    "raw": (sets("icmp.mode=raw"), ALWAYS | ROOT_WITH_NET_RAW),
    "auto with the init container": (
        sets("icmp.mode=auto", "icmp.setPingGroupRange=true"),
        ALWAYS | ROOT_WITH_NET_RAW | PRIVILEGED_INIT,
    ),
    # hardened: file discovery mounts no token; a digest pins the image (and satisfies the
    # pull-policy check)
    "file discovery, digest": (
        sets("discovery.mode=file", "image.digest=sha256:" + "b" * 64),
        ALWAYS - {"CKV_K8S_38", "CKV_K8S_43", "CKV_K8S_15"},
    ),
    # the endpoint's protection: a Secret volume, fsGroup, HTTPS probes, the
    # auth-delegator binding; file discovery mounts the token again (token reviews)
    "tls, client certificates, kubernetes auth, monitors": (
        [*TLS, *CLIENT_AUTH, *AUTH, *MONITORS],
        ALWAYS,
    ),
    "file discovery with kubernetes auth over tls, digest": (
        [*TLS, *AUTH, *FILE_DISCOVERY, *sets("image.digest=sha256:" + "b" * 64)],
        ALWAYS - {"CKV_K8S_43", "CKV_K8S_15"},
    ),
}


def documented() -> set[str]:
    readme = (ROOT / "chart" / "README.md").read_text()
    section = readme.split("## Security scan: accepted findings", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"CKV2?_K8S_\d+", section))


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_only_accepted_findings(name: str, tmp_path: Path) -> None:
    if not (HELM3.exists() and CHECKOV.exists()):
        pytest.skip("helm3 or checkov missing: run scripts/install-tools.sh (make deps does)")
    args, accepted = CONFIGURATIONS[name]
    rendered = helm_template(args)
    (tmp_path / "chart.yaml").write_text(rendered)
    # --skip-download: built-in checks only, no calls to the vendor's platform; as root,
    # in a network namespace of its own as well, so that it cannot reach anything.
    isolate = ["unshare", "--net"] if os.geteuid() == 0 and shutil.which("unshare") else []
    command = [
        str(CHECKOV),
        "-d",
        str(tmp_path),
        "--framework",
        "kubernetes",
        "--skip-download",
        "--output",
        "json",
        "--quiet",
    ]
    result = subprocess.run([*isolate, *command], capture_output=True, text=True, cwd=tmp_path)
    report = json.loads(result.stdout)
    failed = {
        c["check_id"]
        for r in (report if isinstance(report, list) else [report])
        for c in r["results"]["failed_checks"]
    }
    assert failed <= accepted, f"unexplained findings: {sorted(failed - accepted)}"
    assert failed <= documented(), f"not in chart/README.md: {sorted(failed - documented())}"
    assert {"CKV_K8S_19", "CKV_K8S_11"} <= failed  # the scan really ran

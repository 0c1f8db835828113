"""Publishing a release the way users will pull it, to servers on this machine's
loopback: the multi-arch image and the chart (as an OCI artifact) in a real
registry (Debian's ``docker-registry``), the chart also in a classic chart
repository (``helm repo index`` served over HTTP), both signed with cosign, and an
SPDX SBOM per architecture made by syft and attached as a signed attestation.

``node-ping-lab publish DIR`` (``make publish``) does it and keeps serving until
interrupted; tests/test_release.py installs and verifies what it published.
Keys are generated for the run (no Fulcio, no Rekor: nothing leaves the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .controlplane import free_port
from .process import ROOT, kill_all, spawn
from .registry import VERSION, agent_images, buildah, start_registry
from .state import LabError

TOOLS = ROOT / ".cache" / "bin"
ARCHES = ("amd64", "arm64")
CHART_NAME = "node-ping-exporter"
# Offline signing: a key of our own, no transparency log, no signing config from TUF.
COSIGN_OFFLINE = ["--use-signing-config=false", "--tlog-upload=false", "--allow-http-registry"]


def tool(name: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run one of the release tools (.cache/bin, scripts/install-tools.sh); its output."""
    path = TOOLS / name
    if not path.exists():
        raise LabError(f"{path} is missing (scripts/install-tools.sh builds it)")
    result = subprocess.run([str(path), *args], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, **(env or {})}, timeout=600)  # fmt: skip
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip()[-800:]
        raise LabError(f"{name} {args[0]} failed: {said}")
    return result.stdout


@dataclass
class Release:
    """What was published, and where."""

    directory: Path
    registry: str  # 127.0.0.1:PORT
    repo_url: str  # the classic chart repository
    image: str  # REGISTRY/node-ping-exporter:VERSION (the manifest list)
    image_digest: str  # the list's
    platform_digests: dict[str, str]  # per architecture
    chart_version: str
    chart_ref: str  # oci://REGISTRY/charts/node-ping-exporter
    chart_digest: str
    public_key: Path
    sboms: dict[str, Path]
    pids: set[int] = field(default_factory=set)

    def stop(self) -> None:
        kill_all(self.pids)


def chart_version() -> str:
    for line in (ROOT / "chart" / "Chart.yaml").read_text().splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise LabError("chart/Chart.yaml has no version")


def push_images(registry: str) -> tuple[str, str, dict[str, str]]:
    """The manifest list and both images, pushed under one tag: its name, its digest,
    and each platform's digest (read back from the registry)."""
    images = agent_images(ARCHES)
    local = f"localhost/node-ping-exporter:{VERSION}"
    listed = json.loads(buildah("manifest", "inspect", local, check=False) or "{}")
    arches = {m["platform"]["architecture"] for m in listed.get("manifests", [])}
    if arches != set(ARCHES):  # the lab built one architecture since: join both again
        buildah("manifest", "rm", local, check=False)
        buildah("manifest", "create", local)
        for arch, image in images.items():
            buildah("manifest", "add", "--arch", arch, "--os", "linux", local,
                    f"containers-storage:{image}")  # fmt: skip
    name = f"{registry}/node-ping-exporter:{VERSION}"
    buildah("manifest", "push", "--all", "--quiet", "--format", "oci", "--tls-verify=false",
            local, f"docker://{name}")  # fmt: skip
    digest, body = registry_get(registry, f"node-ping-exporter/manifests/{VERSION}",
                                "application/vnd.oci.image.index.v1+json")  # fmt: skip
    platforms = {m["platform"]["architecture"]: m["digest"] for m in json.loads(body)["manifests"]}
    return name, digest, platforms


def registry_get(registry: str, path: str, accept: str) -> tuple[str, bytes]:
    """One GET of the registry's API: the Docker-Content-Digest header and the body."""
    request = urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers.get("Docker-Content-Digest", ""), response.read()


def package_chart(registry: str, directory: Path) -> Path:
    """The chart as released: its default image is the one just published."""
    staging = directory / "staging" / CHART_NAME
    subprocess.run(["rm", "-rf", str(staging.parent)], check=True)
    staging.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(ROOT / "chart"), str(staging)], check=True)
    values = staging / "values.yaml"
    text = values.read_text()
    default = "  repository: node-ping-exporter\n"
    if default not in text:
        raise LabError("chart/values.yaml: image.repository's default line moved")
    values.write_text(text.replace(default, f"  repository: {registry}/node-ping-exporter\n", 1))
    metadata = staging / "Chart.yaml"
    text = metadata.read_text()
    entry = f"      image: node-ping-exporter:{VERSION}\n"
    if entry not in text:
        raise LabError("chart/Chart.yaml: the artifacthub.io/images entry moved")
    metadata.write_text(text.replace(entry, entry.replace("image: ", f"image: {registry}/")))
    out = directory / "charts"
    out.mkdir(exist_ok=True)
    tool("helm3", "package", str(staging), "--destination", str(out))
    return out / f"{CHART_NAME}-{chart_version()}.tgz"


def push_chart(registry: str, package: Path) -> str:
    """``helm push`` to the registry as an OCI artifact; the pushed digest."""
    out = tool("helm3", "push", str(package), f"oci://{registry}/charts", "--plain-http",
               env=helm_env(package.parent.parent))  # fmt: skip
    # helm prints "Pushed: …" and "Digest: sha256:…" (on stderr in some versions)
    for line in out.splitlines():
        if line.startswith("Digest:"):
            return line.split()[1]
    return registry_get(registry, f"charts/{CHART_NAME}/manifests/{chart_version()}",
                        "application/vnd.oci.image.manifest.v1+json")[0]  # fmt: skip


def helm_env(directory: Path) -> dict[str, str]:
    """Helm's repository and registry state kept in ``directory``, not the user's."""
    state = directory / "helm"
    return {"HELM_REPOSITORY_CONFIG": str(state / "repositories.yaml"),
            "HELM_REPOSITORY_CACHE": str(state / "repository"),
            "HELM_REGISTRY_CONFIG": str(state / "registry.json"),
            "HELM_CACHE_HOME": str(state / "cache"), "HELM_CONFIG_HOME": str(state / "config"),
            "HELM_DATA_HOME": str(state / "data")}  # fmt: skip


def serve_charts(directory: Path, log: Path) -> tuple[int, str]:
    """A classic chart repository: ``index.yaml`` and the packages, plain HTTP."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tool("helm3", "repo", "index", str(directory), "--url", url)
    pid = spawn([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                 "--directory", str(directory)], log)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/index.yaml", timeout=2):
            return pid, url
        time.sleep(0.1)
    kill_all({pid})
    raise LabError(f"the chart repository did not start (its log: {log})")


def cosign(*args: str, directory: Path) -> str:
    return tool("cosign", *args, env={"COSIGN_PASSWORD": "", "COSIGN_YES": "true"}, cwd=directory)


def sign(reference: str, directory: Path) -> None:
    """Signs ``reference`` (a digest) and, for an index, every manifest in it."""
    cosign("sign", "--key", "cosign.key", *COSIGN_OFFLINE, "--recursive", reference,
           directory=directory)  # fmt: skip


def sbom(reference: str, arch: str, directory: Path) -> Path:
    """syft's SPDX document for one architecture's image, read from the registry."""
    path = directory / f"sbom-{arch}.spdx.json"
    env = {"SYFT_REGISTRY_INSECURE_USE_HTTP": "true", "SYFT_CHECK_FOR_APP_UPDATE": "false"}
    tool("syft", "scan", f"registry:{reference}", "--platform", f"linux/{arch}",
         "-o", f"spdx-json={path}", "-q", env=env)  # fmt: skip
    return path


def publish(directory: Path) -> Release:
    """Everything, from built images to signed artifacts; servers left running."""
    directory.mkdir(parents=True, exist_ok=True)
    pids: set[int] = set()
    try:
        pid, port = start_registry(directory / "registry", directory / "registry.log")
        pids.add(pid)
        registry = f"127.0.0.1:{port}"
        image, image_digest, platforms = push_images(registry)
        package = package_chart(registry, directory)
        chart_digest = push_chart(registry, package)
        pid, repo_url = serve_charts(package.parent, directory / "charts.log")
        pids.add(pid)
        for stale in ("cosign.key", "cosign.pub"):
            (directory / stale).unlink(missing_ok=True)
        cosign("generate-key-pair", directory=directory)
        repository = f"{registry}/node-ping-exporter"
        sign(f"{repository}@{image_digest}", directory)
        sign(f"{registry}/charts/{CHART_NAME}@{chart_digest}", directory)
        sboms = {}
        for arch, digest in platforms.items():
            sboms[arch] = sbom(f"{repository}@{digest}", arch, directory)
            cosign("attest", "--key", "cosign.key", *COSIGN_OFFLINE, "--type", "spdxjson",
                   "--predicate", str(sboms[arch]), f"{repository}@{digest}",
                   directory=directory)  # fmt: skip
        return Release(directory, registry, repo_url, image, image_digest, platforms,
                       chart_version(), f"oci://{registry}/charts/{CHART_NAME}", chart_digest,
                       directory / "cosign.pub", sboms, pids)  # fmt: skip
    except BaseException:
        kill_all(pids)
        raise


def verify(release: Release, reference: str) -> list[dict[str, Any]]:
    """The signed payloads cosign verified on ``reference`` with the release's public
    key (raises if none verifies)."""
    out = cosign("verify", "--key", str(release.public_key), "--insecure-ignore-tlog=true",
                  "--allow-http-registry", reference, directory=release.directory)  # fmt: skip
    payloads: list[dict[str, Any]] = json.loads(out)
    return payloads


def verify_sbom(release: Release, arch: str) -> dict[str, object]:
    """The SBOM attested on one architecture's image, signature checked: the SPDX document."""
    import base64

    out = cosign("verify-attestation", "--key", str(release.public_key), "--type", "spdxjson",
                 "--insecure-ignore-tlog=true", "--allow-http-registry",
                 f"{release.registry}/node-ping-exporter@{release.platform_digests[arch]}",
                 directory=release.directory)  # fmt: skip
    envelope = json.loads(out.splitlines()[0])
    statement = json.loads(base64.b64decode(envelope["payload"]))
    predicate: dict[str, object] = statement["predicate"]
    return predicate


def chart_files(package: Path) -> list[str]:
    with tarfile.open(package) as archive:
        return archive.getnames()

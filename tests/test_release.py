"""A release as users will pull it, published to servers on loopback (lab/release.py):
the multi-arch image under one tag in a real registry (Debian's docker-registry),
the chart as an OCI artifact there and in a classic repository (``helm repo
index`` over HTTP), both installable with Helm against a real control plane;
cosign signatures and syft's SBOM attestations verified with the release's key,
and refused with another; provenance annotations on every image manifest."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import __version__

from .conftest import ROOT

TOOLS = ROOT / ".cache" / "bin"
INDEX = "application/vnd.oci.image.index.v1+json"
# Every Debian package in the image (scripts/assemble-rootfs.sh): nothing else
# (no perl, bash, dpkg, apt) may show up in its SBOM.
DEBIAN_PACKAGES = {
    "libc6", "libgcc-s1", "libssl3", "zlib1g", "libexpat1", "libbz2-1.0", "liblzma5",
    "libffi8", "libuuid1", "libpython3.11-minimal", "libpython3.11-stdlib",
    "python3.11-minimal", "ca-certificates", "netbase", "base-files",
}  # fmt: skip
MANIFEST = "application/vnd.oci.image.manifest.v1+json"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not shutil.which("buildah")
    or not shutil.which("qemu-aarch64-static")
    or not Path("/usr/bin/docker-registry").exists()
    or not all((TOOLS / name).exists() for name in ("helm3", "helm4", "cosign", "syft")),
    reason="needs root, buildah, qemu-user-static, docker-registry and the release tools "
    "(make deps installs and builds them)",
)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from lab.release import publish

    published = publish(tmp_path_factory.mktemp("release"))
    try:
        yield published
    finally:
        published.stop()


def manifest(release: Any, reference: str, accept: str = MANIFEST) -> dict[str, Any]:
    from lab.release import registry_get

    return dict(json.loads(registry_get(release.registry, reference, accept)[1]))


def test_one_tag_serves_both_architectures_with_provenance(release: Any) -> None:
    index = manifest(release, f"node-ping-exporter/manifests/{__version__}", INDEX)
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]}
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return result.stdout.strip() or "unknown"

    revision, origin = git("rev-parse", "HEAD"), git("remote", "get-url", "origin")
    for arch, digest in release.platform_digests.items():
        image = manifest(release, f"node-ping-exporter/manifests/{digest}")
        notes = image["annotations"]
        assert notes["org.opencontainers.image.version"] == __version__
        assert notes["org.opencontainers.image.revision"] == revision
        # build-image.sh: the origin, without credentials (SOURCE_URL, when a release sets it)
        source = os.environ.get("SOURCE_URL") or re.sub(r"//[^/@]*@", "//", origin)
        assert notes["org.opencontainers.image.source"] == source
        assert notes["org.opencontainers.image.licenses"] == "Apache-2.0"
        compressed = sum(layer["size"] for layer in image["layers"])
        print(f"\n{arch}: {len(image['layers'])} layer(s), {compressed / 1e6:.1f} MB compressed")
        assert compressed < 60e6


def test_signatures_verify_with_the_release_key_only(release: Any, tmp_path: Path) -> None:
    from lab.release import cosign, verify
    from lab.state import LabError

    repository = f"{release.registry}/node-ping-exporter"
    chart = f"{release.registry}/charts/node-ping-exporter@{release.chart_digest}"
    platforms = [f"{repository}@{digest}" for digest in release.platform_digests.values()]
    references = [f"{repository}@{release.image_digest}", *platforms, chart]
    for reference in references:
        signed = [p["critical"]["identity"]["docker-reference"] for p in verify(release, reference)]
        assert signed and set(signed) == {reference}, (reference, signed)
    # another key (an attacker's, or last year's) does not verify them
    cosign("generate-key-pair", directory=tmp_path)
    other = type(release)(**{**release.__dict__, "public_key": tmp_path / "cosign.pub"})
    with pytest.raises(LabError, match=r"signature"):
        verify(other, references[0])


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_sbom_is_attested_and_lists_what_the_image_holds(release: Any, arch: str) -> None:
    from lab.release import verify_sbom

    document = verify_sbom(release, arch)
    assert str(document["spdxVersion"]).startswith("SPDX-")
    packages = {p["name"]: p for p in document["packages"]}  # type: ignore[attr-defined]
    debian = {name for name, p in packages.items() if purl(p).startswith("pkg:deb/debian/")}
    assert debian == DEBIAN_PACKAGES
    python = {name.lower().replace("_", "-") for name, p in packages.items()
              if purl(p).startswith("pkg:pypi/")}  # fmt: skip
    assert {"kubernetes", "pydantic-core", "uvloop", "node-ping-exporter"} <= python
    assert not {"aiohttp", "yarl", "multidict", "tzdata", "pip", "setuptools"} & python
    assert packages["node-ping-exporter"]["versionInfo"] == __version__


def purl(package: dict[str, Any]) -> str:
    refs = package.get("externalRefs", [])
    return next((r["referenceLocator"] for r in refs if r["referenceType"] == "purl"), "")


@pytest.mark.parametrize(
    ("source", "helm"), [("oci", "helm3"), ("oci", "helm4"), ("repository", "helm3")]
)
def test_chart_installs_from_the_registry_and_the_repository(
    release: Any, control_plane: Any, source: str, helm: str
) -> None:
    from kubernetes import client

    namespace = f"release-{source}-{helm}"
    if source == "oci":
        chart = [release.chart_ref, "--version", release.chart_version, "--plain-http"]
    else:
        control_plane.helm("repo", "add", "npe-local", release.repo_url, helm=helm)
        control_plane.helm("repo", "update", "npe-local", helm=helm)
        found = control_plane.helm(
            "search", "repo", "npe-local/node-ping-exporter", "-o", "json", helm=helm
        )
        assert [entry["version"] for entry in json.loads(found)] == [release.chart_version]
        chart = ["npe-local/node-ping-exporter", "--version", release.chart_version]
    control_plane.helm("install", "npe", *chart, "-n", namespace, "--create-namespace", helm=helm)
    apps = client.AppsV1Api(control_plane.api_client())
    (daemonset,) = apps.list_namespaced_daemon_set(namespace).items
    pod: Any = daemonset.spec.template.spec
    images = {c.image for c in pod.containers}
    assert images == {f"{release.registry}/node-ping-exporter:{__version__}"}
    metadata = yaml.safe_load(
        control_plane.helm("get", "metadata", "npe", "-n", namespace, "-o", "yaml", helm=helm)
    )
    assert metadata["version"] == release.chart_version
    control_plane.helm("uninstall", "npe", "-n", namespace, helm=helm)

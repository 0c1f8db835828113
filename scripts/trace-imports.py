"""The Python files the agent imports, one per line as paths inside the image: the
only ones worth shipping bytecode for (scripts/build-image.sh runs this with the
image's own interpreter, chrooted into its root filesystem).

Every module of the agent's package is imported, and every name the agent takes
from the kubernetes client's lazy namespaces (``client.CoreV1Api``, ``V1…`` models)
is resolved, so the list holds what a running agent loads, not the whole client
(about 700 model modules it never touches).
"""

import importlib
import pkgutil
import re
import sys
from pathlib import Path

SITE = "/opt/node-ping-exporter/lib/python3.11/site-packages"
sys.path.insert(0, SITE)

import exporter  # noqa: E402

package = Path(exporter.__file__).parent
for module in pkgutil.walk_packages([str(package)], "exporter."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)

from kubernetes import client  # noqa: E402

source = "\n".join(p.read_text() for p in package.rglob("*.py"))
names = re.findall(r"\bclient\.([A-Z]\w+)", source) + re.findall(r"\b(V1[A-Z]\w+)", source)
for name in sorted(set(names)):
    getattr(client, name, None)  # http.client's names match too: absent here

for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None) or ""
    if path.endswith(".py"):
        print(path)

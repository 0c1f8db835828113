"""A stand-in for kube-apiserver's Node list/watch, for discovery tests.

A fake, by necessity: a real kube-apiserver comes with the control-plane issue.
It speaks the parts of the protocol the agent uses: ``GET /api/v1/nodes``
(NodeList with a resourceVersion, labelSelector equality), and
``?watch=true&resourceVersion=N`` as a chunked stream of JSON events, with
bookmarks, ``410 Gone`` (ERROR event) for versions older than the last
compaction, server-side timeouts, dropped connections and outages.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse


class FakeApiServer:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.version = 100
        self.compacted = 0
        self.nodes: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.lists = 0
        self.watches = 0
        self.down = False
        self._generation = 0  # bumping it ends every open watch
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "agent", "user": {"token": "not-checked"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "agent"}}],
                }
            )
        )
        return path

    # -- state changes (as the control plane would make them) -------------------

    def _record(self, kind: str, node: dict[str, Any]) -> None:
        self.version += 1
        node["metadata"]["resourceVersion"] = str(self.version)
        self.events.append((self.version, kind, json.loads(json.dumps(node))))
        self.lock.notify_all()

    def put_node(
        self,
        name: str,
        addresses: list[tuple[str, str]],
        labels: dict[str, str] | None = None,
        deleting: bool = False,
    ) -> None:
        with self.lock:
            kind = "MODIFIED" if name in self.nodes else "ADDED"
            metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
            if deleting:
                metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
                metadata["finalizers"] = ["example.com/hold"]
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": metadata,
                "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
            }
            self.nodes[name] = node
            self._record(kind, node)

    def delete_node(self, name: str) -> None:
        with self.lock:
            self._record("DELETED", self.nodes.pop(name))

    def drop_watches(self) -> None:
        """Close every open watch connection (an apiserver restart or a load balancer)."""
        with self.lock:
            self._generation += 1
            self.lock.notify_all()

    def compact(self) -> None:
        """Forget history, as etcd compaction does after writes an open watch has not
        seen yet (the watch is ended first): resuming from an older version gets 410."""
        with self.lock:
            self._generation += 1
            self.version += 1  # that unseen write
            self.compacted = self.version
            self.events.clear()
            self._generation += 1
            self.lock.notify_all()

    @contextmanager
    def running(self) -> Iterator[FakeApiServer]:
        self.thread.start()
        try:
            yield self
        finally:
            self.drop_watches()
            self.server.shutdown()
            self.server.server_close()

    # -- HTTP -------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if fake.down:
                    self._json(503, {"kind": "Status", "code": 503, "message": "unavailable"})
                elif url.path != "/api/v1/nodes":
                    self._json(404, {"kind": "Status", "code": 404})
                elif query.get("watch") in ("true", "1", "True"):
                    self._watch(query)
                else:
                    self._list(query)

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _matches(self, node: dict[str, Any], selector: str | None) -> bool:
                labels = node["metadata"].get("labels") or {}
                for term in filter(None, (selector or "").split(",")):
                    key, _, want = term.partition("=")
                    if labels.get(key) != want:
                        return False
                return True

            def _list(self, query: dict[str, str]) -> None:
                with fake.lock:
                    fake.lists += 1
                    items = [
                        n
                        for n in fake.nodes.values()
                        if self._matches(n, query.get("labelSelector"))
                    ]
                    body = {
                        "apiVersion": "v1",
                        "kind": "NodeList",
                        "metadata": {"resourceVersion": str(fake.version)},
                        "items": items,
                    }
                self._json(200, body)

            def _chunk(self, event: dict[str, Any]) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _watch(self, query: dict[str, str]) -> None:
                since = int(query.get("resourceVersion") or 0)
                timeout = float(query.get("timeoutSeconds") or 300)
                selector = query.get("labelSelector")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with fake.lock:
                    fake.watches += 1
                    generation = fake._generation
                    if since < fake.compacted:
                        self._chunk(
                            {
                                "type": "ERROR",
                                "object": {
                                    "kind": "Status",
                                    "code": 410,
                                    "reason": "Expired",
                                    "message": f"too old resource version: {since}",
                                },
                            }
                        )
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    sent = since
                    self._chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": "Node",
                                "metadata": {"resourceVersion": str(fake.version)},
                            },
                        }
                    )
                    while generation == fake._generation and not fake.down:
                        for version, kind, node in fake.events:
                            if version > sent:
                                sent = version
                                if self._matches(node, selector) or kind == "DELETED":
                                    self._chunk({"type": kind, "object": node})
                        if not fake.lock.wait(timeout=min(timeout, 0.5)):
                            timeout -= 0.5
                            if timeout <= 0:
                                break
                if generation == fake._generation:
                    self.wfile.write(b"0\r\n\r\n")  # clean end (server-side timeout)
                else:
                    self.close_connection = True  # dropped mid-stream

        return Handler

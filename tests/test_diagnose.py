"""`node-ping-exporter diagnose`: the rules' verdicts in words, read from what the
rules recorded or evaluated inline from the same rules (the lab e2e proves both
agree with the alerts on every fault), at 500 nodes, and its error paths against a
real Prometheus and a local HTTP server giving bad, slow, endless or hostile
answers."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from exporter import diagnose as diagnose_module
from exporter import rules
from exporter.diagnose import KINDS, RuleSet, main, visible

from .conftest import ROOT

Pair = tuple[str, str]
THRESHOLDS_QUERY = '{__name__=~"node_ping:threshold:.+"}'


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "diagnose", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_prometheus_is_one_line_exit_2() -> None:
    result = run("--prometheus", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stderr.startswith("node-ping-exporter diagnose: cannot reach Prometheus at")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_window() -> None:
    result = run("--prometheus", "http://127.0.0.1:1", "--window", "ten minutes")
    assert result.returncode == 2 and "not a Prometheus duration" in result.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
def test_prometheus_without_ping_series(tmp_path: Path) -> None:
    """A real, empty Prometheus on loopback: the error says what is missing or null."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1m}\nscrape_configs: []\n")
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        result = run("--prometheus", f"http://127.0.0.1:{port}")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "has no pair to judge over the last 3m" in result.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- the rules, inline -------------------------------------------------------------------


def test_inline_rules_leave_no_recorded_name_and_parse(tmp_path: Path) -> None:
    """Every series diagnose asks for, expanded, is PromQL that promtool accepts and that
    refers only to the agents' own series (and kube-state-metrics')."""
    rule_set = RuleSet(
        {"seriesSelector": 'job="node-exporter"', "lossWindow": "10m"}, {"rtt_ms": 5}
    )
    names = [f"node_ping:verdict:{k}" for k in KINDS]
    names += [*diagnose_module.DETAILS, "node_ping:pair_loss:ratio"]
    records = []
    for name in names:
        expr = rule_set.expand(name)
        assert "node_ping:" not in expr.replace("kube_node_ping_", ""), name
        records.append({"record": f"check:{name.split(':', 1)[1]}", "expr": expr})
    assert "[10m]" in rule_set.expand("node_ping:pair_loss:ratio")
    assert 'kube_node_ping_packets_sent_total{job="node-exporter"}' in rule_set.expand(
        "node_ping:pair_loss:ratio"
    )
    assert "vector(5)" in rule_set.expand("node_ping:verdict:node_slow")
    path = tmp_path / "inline.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "inline", "rules": records}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_answer_written_back_as_promql_is_the_same_series(tmp_path: Path) -> None:
    """A rule already asked is read back as a literal in later queries: promtool
    evaluates it to the very series answered, odd values and label text included, and
    a RuleSet uses it only where it is shorter than the expression."""
    series = [
        ({"__name__": "x", "node": "node-1"}, 0.25),
        ({"node": 'we"ird $1 \\ ü', "direction": "in"}, -1e-05),
        ({"node": "node-3"}, float("inf")),
    ]
    tests = [
        {
            "expr": diagnose_module.literal(series),
            "eval_time": "0s",
            "exp_samples": [
                {"labels": '{node="node-1"}', "value": 0.25},
                {"labels": '{direction="in",node="we\\"ird $1 \\\\ ü"}', "value": -1e-05},
                {"labels": '{node="node-3"}', "value": float("inf")},
            ],
        },
        {
            "expr": f"count({diagnose_module.literal([({'node': 'a'}, float('nan'))])})",
            "eval_time": "0s",
            "exp_samples": [{"labels": "{}", "value": 1}],
        },
        {"expr": f"count({diagnose_module.literal([])})", "eval_time": "0s", "exp_samples": []},
    ]
    (tmp_path / "none.yml").write_text("groups: []\n")
    spec = {"rule_files": [str(tmp_path / "none.yml")], "tests": [{"promql_expr_test": tests}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    result = subprocess.run(
        ["promtool", "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr

    rule_set = RuleSet({"seriesSelector": ""}, {})
    link_loss = rule_set.expand("node_ping:verdict:link_loss")
    for kind in KINDS[: KINDS.index("link_loss")]:
        rule_set.answered(f"node_ping:verdict:{kind}", [({"node": "n2"}, 0.3)])
    assert len(rule_set.expand("node_ping:verdict:link_loss")) < len(link_loss) / 10
    assert 'label_replace(vector(0.3), "node", "n2", "", "")' in rule_set.expand(
        "node_ping:verdict:protocol_loss"
    )
    many = [({"source_node": f"n{i}", "destination_node": "d"}, 0.1) for i in range(10**4)]
    rule_set.answered("node_ping:pair_loss:ratio", many)  # longer than its expression
    assert "vector(0.1)" not in rule_set.expand("node_ping:pair_loss:ratio")


# -- a local HTTP server standing in for Prometheus ---------------------------------

PREFIX = "node-ping-exporter diagnose: "
Respond = Callable[[BaseHTTPRequestHandler, str], None]  # (handler, PromQL query)


class FakePrometheus:
    """A real HTTP server on 127.0.0.1 (port 0) in a thread; respond() answers each query
    (GET or POST, as Prometheus's API takes both)."""

    def __init__(self, respond: Respond) -> None:
        self.stop = threading.Event()
        self.queries: list[str] = []
        queries = self.queries

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                self.answer(query.get("query", [""])[0])

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                self.answer(form.get("query", [""])[0])

            def answer(self, query: str) -> None:
                queries.append(query)
                with contextlib.suppress(OSError):  # the client gave up on a slow answer
                    respond(self, query)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Respond], FakePrometheus]]:
    """Start FakePrometheus servers, with any proxy settings out of the way (loopback only)."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    servers: list[FakePrometheus] = []

    def start(respond: Respond) -> FakePrometheus:
        servers.append(FakePrometheus(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def send(handler: BaseHTTPRequestHandler, body: bytes, status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def vector(*samples: object) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": list(samples)}}
    ).encode()


def answer(values: dict[Pair, float | str]) -> bytes:
    """What Prometheus sends for an instant query: one sample per pair."""
    return vector(
        *(
            {"metric": {"source_node": s, "destination_node": d}, "value": [1.7e9, str(v)]}
            for (s, d), v in values.items()
        )
    )


def per_node(name: str, values: dict[str, float], **labels: str) -> bytes:
    return vector(
        *(
            {"metric": {"__name__": name, "node": n} | labels, "value": [1.7e9, str(v)]}
            for n, v in values.items()
        )
    )


DEFAULT_THRESHOLDS = {
    r["record"]: r["expr"]
    for g in yaml.safe_load(rules.render())["groups"]
    for r in g["rules"]
    if r.get("record", "").startswith("node_ping:threshold:")
}


def thresholds_answer() -> bytes:
    return vector(
        *(
            {"metric": {"__name__": name}, "value": [1.7e9, expr[len("vector(") : -1]]}
            for name, expr in DEFAULT_THRESHOLDS.items()
        )
    )


def recorded(loss: bytes, rtt: bytes = b"", **series: bytes) -> Respond:
    """A Prometheus that runs the rules: thresholds, the matrix, and the given recorded
    series by name; everything else empty."""
    answers = {
        THRESHOLDS_QUERY: thresholds_answer(),
        "node_ping:pair_loss:ratio": loss,
        "node_ping:pair_rtt:mean_ms": rtt or answer({}),
    }
    answers |= {name.replace("__", ":"): body for name, body in series.items()}

    def respond(handler: BaseHTTPRequestHandler, query: str) -> None:
        send(handler, answers.get(query) or vector())

    return respond


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def full_mesh(nodes: list[str], faulty: dict[Pair, float]) -> dict[Pair, float | str]:
    return {(s, d): faulty.get((s, d), 0.0) for s in nodes for d in nodes if s != d}


SIX = [f"n{i}" for i in range(1, 7)]


def test_every_verdict_in_words(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """The recorded verdicts, worded with their figures, in the rules' order."""
    loss = full_mesh(SIX, {("n1", "n2"): 0.3, ("n3", "n2"): 0.3, ("n4", "n5"): 0.5})
    n = "node_ping__"
    server = serve(
        recorded(
            answer(loss),
            **{
                f"{n}verdict__partition": per_node("x", {"n1": 2, "n2": 2}, zone="zone-a"),
                f"{n}pair_loss__ratio_latest": answer(loss),
                f"{n}verdict__node_unreachable": per_node("x", {"n6": 1.0}),
                f"{n}verdict__node_loss": per_node("x", {"n2": 1.0}),
                f"{n}verdict__node_flicker": per_node("x", {"n3": 0.8}),
                f"{n}verdict__node_outage": per_node("x", {"n4": 0.6}),
                f"{n}verdict__agent_starved": per_node("x", {"n5": 0.25}),
                f"{n}verdict__link_loss": vector(
                    {"metric": {"source_node": "n4", "destination_node": "n5"}, "value": [1, "0.5"]}
                ),
                f"{n}verdict__node_slow": per_node("x", {"n1": 20.0}),
                f"{n}verdict__protocol_loss": per_node("x", {"n1": 0.9}, protocol="udp"),
                f"{n}verdict__link_loss_direction": vector(
                    {"metric": {"from_node": "n4", "to_node": "n5"}, "value": [1, "0.5"]}
                ),
                f"{n}node_udp_only_sources__ratio": per_node("x", {"n1": 1.0}),
                f"{n}verdict__node_size_loss": per_node("x", {"n3": 1.0}),
                f"{n}node_size_only_sources__ratio": per_node("x", {"n3": 1.0}),
                f"{n}node_large__bytes": per_node("x", {"n3": 1500}),
                f"{n}verdict__link_size_loss": vector(
                    {"metric": {"source_node": "n5", "destination_node": "n6"}, "value": [1, "1"]}
                ),
                f"{n}pair_large__bytes": answer({("n5", "n6"): 1400.0}),
                f"{n}verdict__size_refused": per_node("x", {"n4": 1.0}),
                f"{n}node_dead_sources__ratio": per_node("x", {"n6": 1.0}),
                f"{n}node_own_loss__ratio": per_node("x", {"n2": 0.3}),
                f"{n}node_loss__ratio": per_node("x", {"n2": 0.3}),
                f"{n}node_lossy_sources__ratio": per_node("x", {"n2": 1.0}),
                f"{n}node_flickering_sources__ratio": per_node("x", {"n3": 0.8}),
                f"{n}node_outage_sources__ratio": per_node("x", {"n4": 0.6}),
                f"{n}node_outage__mean_seconds": per_node("x", {"n3": 14.6, "n4": 15.2}),
                f"{n}node_agent_lag__seconds": per_node("x", {"n5": 2.04}),
                f"{n}node_slow_sources__ratio": per_node("x", {"n1": 1.0}),
            },
        )
    )
    code, out, err = run_main(capsys, "--prometheus", server.url)
    assert (code, err) == (1, "")
    assert out.splitlines()[0] == (
        "packet loss % over the rules' loss window (rows: source, columns: destination; from "
        "recording rules)"
    )
    assert out.splitlines()[-12:] == [
        "partition: n1, n2 (zone-a) reach their own side and nothing across",
        "n6 is unreachable from 5/5 nodes (its agent reports nothing)",
        "n2 or its link loses packets (30% from 5/5 nodes, and 30% of its own probes lost)",
        "n3 flickers: 4/5 nodes saw it vanish and come back 2+ times in the rules' outage "
        "window, 15 s on average",
        "n4 had an outage: 3/5 nodes saw it vanish and come back in the rules' outage window, "
        "15 s on average",
        "agent on n5 starved: 25% of its probes skipped, loop lag up to 2.0 s; its own "
        "measurements are not evidence of packet loss",
        "n4 → n5: 50% loss, other paths clean (link); lost on the way n4 → n5 (50%)",
        "UDP lost at n1 while ICMP passes: 90% of STAMP packets from 5/5 nodes (a firewall or "
        "policy on UDP, or its reflector refuses them)",
        "large packets lost at n3 while small ones pass: 100% of the 1500-byte path-MTU probes "
        "from 5/5 nodes (an MTU black hole on its path)",
        "large packets lost on n5 → n6 while small ones pass: 100% of its 1400-byte path-MTU "
        "probes (a smaller MTU on that path)",
        "n4's kernel refuses 100% of its path-MTU probes: it knows a smaller path MTU (a route's "
        "mtu or a learnt one); nothing reached the wire, not loss",
        "n1: slow, mean RTT 20.0 ms from 5/5 sources",
    ]
    code, out, _ = run_main(capsys, "--prometheus", server.url, "--output", "json")
    verdicts = json.loads(out)["verdicts"]
    assert [v["kind"] for v in verdicts] == [k for k in KINDS if k != "ambiguous"]
    assert json.loads(out)["thresholds"]["pair_loss_ratio"] == 0.05


def test_stamp_places_a_node_loss_or_finds_it_icmp_only(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """With STAMP data the node loss line names the way, or says only ICMP is lost."""
    loss = full_mesh(SIX, {("n1", "n2"): 0.3, ("n3", "n4"): 0.2})
    n = "node_ping__"
    server = serve(
        recorded(
            answer(loss),
            **{
                f"{n}verdict__node_loss": per_node("x", {"n2": 1.0, "n4": 1.0, "n6": 1.0}),
                f"{n}verdict__node_loss_direction": vector(
                    {"metric": {"node": "n2", "direction": "in"}, "value": [1, "0.3"]},
                    {"metric": {"node": "n6", "direction": "in"}, "value": [1, "0.1"]},
                    {"metric": {"node": "n6", "direction": "out"}, "value": [1, "0.2"]},
                ),
                f"{n}verdict__protocol_loss": per_node("x", {"n4": 0.2}, protocol="icmp"),
                f"{n}node_loss__ratio": per_node("x", {"n2": 0.3, "n4": 0.2, "n6": 0.28}),
                f"{n}node_lossy_sources__ratio": per_node("x", {"n2": 1.0, "n4": 1.0, "n6": 1.0}),
                f"{n}node_own_loss__ratio": per_node("x", {"n2": 0.3, "n4": 0.2, "n6": 0.28}),
            },
        )
    )
    code, out, _ = run_main(capsys, "--prometheus", server.url)
    assert code == 1
    assert out.splitlines()[-3:] == [
        "n2 loses 30% of what arrives (echo: 30% from 5/5 nodes, and 30% of its own probes lost)",
        "n4: ICMP lost while UDP passes (20% from 5/5 nodes, and 20% of its own probes lost): "
        "a policy or rate limit on ICMP, not its link",
        "n6 loses 10% of what arrives and 20% of what leaves (echo: 28% from 5/5 nodes, and "
        "28% of its own probes lost)",
    ]


def test_partition_sides_and_ambiguous_candidates(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """The sides come from the pairs still alive between the partition's nodes."""
    cut = {(a, b): 1.0 for a in SIX[:2] for b in SIX[2:]}
    cut |= {(b, a): 1.0 for a, b in cut}
    sides = per_node("x", {n: 2 if n in SIX[:2] else 4 for n in SIX})
    server = serve(
        recorded(
            answer(full_mesh(SIX, cut)),
            node_ping__verdict__partition=sides,
            node_ping__pair_loss__ratio_latest=answer(full_mesh(SIX, cut)),
        )
    )
    code, out, _ = run_main(capsys, "--prometheus", server.url)
    assert code == 1
    assert out.splitlines()[-1] == (
        "partition: n1, n2 | n3, n4, n5, n6 reach their own side and nothing across"
    )
    three = ["a", "b", "c"]
    server = serve(
        recorded(
            answer(full_mesh(three, {p: 0.3 for p in full_mesh(three, {})})),
            node_ping__verdict__ambiguous=vector({"metric": {}, "value": [1, "3"]}),
            node_ping__node_loss_suspect__ratio=per_node("x", dict.fromkeys(three, 1.0)),
        )
    )
    code, out, _ = run_main(capsys, "--prometheus", server.url)
    assert out.splitlines()[-1].startswith(
        "ambiguous: all 3 nodes lose packets to most of the others and the matrix cannot tell "
        "which is at fault; candidates: a, b, c"
    )


def zones_cut_partition(
    serve: Callable[[Respond], FakePrometheus],
    capsys: pytest.CaptureFixture[str],
    zone: dict[str, str],
    latest: dict[Pair, float | str],
    side_size: dict[str, int],
) -> str:
    """diagnose's partition line when the rules found the two zones of ``zone`` cut
    from each other, with ``latest`` the pairs probed and each node's side size."""
    sides = vector(
        *(
            {"metric": {"node": n, "zone": zone[n]}, "value": [1.7e9, str(side_size[n])]}
            for n in zone
        )
    )
    a, b = sorted(set(zone.values()))
    cuts = vector(
        *(
            {"metric": {"source_zone": x, "destination_zone": y}, "value": [1.7e9, "1"]}
            for x, y in ((a, b), (b, a))
        )
    )
    server = serve(
        recorded(
            answer(latest),
            node_ping__verdict__partition=sides,
            node_ping__pair_loss__ratio_latest=answer(latest),
            node_ping__zone_pair__cut=cuts,
        )
    )
    code, out, _ = run_main(capsys, "--prometheus", server.url)
    assert code == 1
    return out.splitlines()[-1]


def test_a_cut_zone_is_one_side_on_a_sample(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """On a sample a cut zone's nodes need not probe each other (n3 probes only
    zone-b, all dead): the zones the rules found cut join their nodes into one side."""
    zone = {n: "zone-a" if n in SIX[:3] else "zone-b" for n in SIX}
    probed = [("n1", "n2"), ("n3", "n4"), ("n2", "n5"), ("n4", "n5"), ("n6", "n4"), ("n5", "n1")]
    latest: dict[Pair, float | str] = {
        (s, d): 1.0 if zone[s] != zone[d] else 0.0 for s, d in probed
    }
    line = zones_cut_partition(serve, capsys, zone, latest, dict.fromkeys(SIX, 3))
    assert line == (
        "partition: n1, n2, n3 (zone-a) | n4, n5, n6 (zone-b) reach their own side and "
        "nothing across"
    )


def test_a_node_across_the_cut_from_its_cut_zone_stays_on_its_side(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """A zone cut from another (most of its pairs dead) can have a node on the other
    side (n3 of zone-b, which reaches zone-c): it is not joined to its zone's side."""
    zone = {n: "zone-b" if n in SIX[:3] else "zone-c" for n in SIX}
    side = {"n1", "n2"}
    latest = full_mesh(SIX, {(s, d): 1.0 for s in SIX for d in SIX if (s in side) != (d in side)})
    sizes = {n: 2 if n in side else 4 for n in SIX}
    assert zones_cut_partition(serve, capsys, zone, latest, sizes) == (
        "partition: n1, n2 (zone-b) | n3, n4, n5, n6 (zone-b, zone-c) reach their own side "
        "and nothing across"
    )


def test_without_the_rules_the_same_rules_are_evaluated_inline(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """No node_ping:threshold:* series (rules not loaded), or another window, selector or
    threshold: every query is the rules' own expression, expanded."""
    matrix = answer(full_mesh(SIX, {}))
    for loaded, args, config, thresholds in [
        (False, [], {"seriesSelector": ""}, {}),
        (True, ["--window", "10m"], {"seriesSelector": "", "lossWindow": "10m"}, {}),
        (True, ["--selector", 'job="x"'], {"seriesSelector": 'job="x"'}, {}),
        (True, ["--loss-threshold", "0.01"], {"seriesSelector": ""}, {"pair_loss_ratio": 0.01}),
    ]:
        base = {
            k.removeprefix("node_ping:threshold:"): float(v[7:-1])
            for k, v in DEFAULT_THRESHOLDS.items()
        }
        expected = RuleSet(config, (base if loaded else {}) | thresholds)
        pair_loss = expected.expand("node_ping:pair_loss:ratio")

        def respond(
            handler: BaseHTTPRequestHandler,
            query: str,
            loaded: bool = loaded,
            pair: str = pair_loss,
        ) -> None:
            if query == THRESHOLDS_QUERY:
                send(handler, thresholds_answer() if loaded else vector())
            else:
                send(handler, matrix if query == pair else vector())

        server = serve(respond)
        code, out, err = run_main(capsys, "--prometheus", server.url, *args)
        assert (code, err) == (0, ""), args
        assert "the rules, evaluated by diagnose" in out.splitlines()[0]
        asked = set(server.queries)
        assert pair_loss in asked
        # Verdicts read the verdicts asked before them as they were answered (empty).
        for kind in KINDS[: KINDS.index("link_loss")]:
            expected.answered(f"node_ping:verdict:{kind}", [])
        expected.answered("node_ping:pair_rtt:mean_ms", [])
        assert expected.expand("node_ping:verdict:link_loss") in asked
        assert not any(q.startswith("node_ping:") for q in asked)


# -- 500 nodes ----------------------------------------------------------------------


def test_500_node_mesh_through_http(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """249,500 pairs and their RTTs read, the matrix printed, a verdict worded: within a
    guard time (the benchmark is `python -m benchmarks.diagnose_scale`)."""
    names = [f"node-{i:04d}" for i in range(500)]
    loss: dict[Pair, float | str] = {}
    rtt: dict[Pair, float | str] = {}
    for s in names:
        for d in names:
            if s != d:
                loss[(s, d)] = 1.0 if names[1] in (s, d) else 0.0
                rtt[(s, d)] = "NaN" if names[1] in (s, d) else 0.4
    server = serve(
        recorded(
            answer(loss),
            answer(rtt),
            node_ping__verdict__node_unreachable=per_node("x", {names[1]: 1.0}),
            node_ping__node_dead_sources__ratio=per_node("x", {names[1]: 1.0}),
            node_ping__node_own_loss__ratio=per_node("x", {names[1]: 1.0}),
        )
    )
    start = time.monotonic()
    code, out, err = run_main(capsys, "--prometheus", server.url)
    assert time.monotonic() - start < 60, "a guard only: `python -m benchmarks.diagnose_scale`"
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert len(lines) == 2 + 500 + 1 + 1
    assert lines[2].startswith("node-0000 ") and lines[2].split()[1:3] == ["-", "100.0"]
    assert lines[-1] == "node-0001 is unreachable from 499/499 nodes (100% of its own probes lost)"


# -- answers it cannot read: exit 2, one line ------------------------------------------


def sample(drop: str = "", **fields: object) -> dict[str, object]:
    """A good sample with fields (or *_node labels) replaced, or one dropped."""
    labels: dict[str, object] = {"source_node": "a", "destination_node": "b"}
    out: dict[str, object] = {"metric": labels, "value": [1.7e9, "0.5"]}
    for key, value in fields.items():
        (labels if key.endswith("_node") else out)[key] = value
    labels.pop(drop, None)
    out.pop(drop, None)
    return out


UNREADABLE: dict[str, tuple[bytes, str]] = {
    "a list": (b"[]", "the answer is [], expected a JSON object"),
    "not JSON": (
        b"<html>proxy error</html>",
        "not JSON (Expecting value: line 1 column 1 (char 0))",
    ),
    "empty": (b"", "not JSON (Expecting value"),
    "not UTF-8": (b'{"status": "\xff"}', "not JSON ("),
    "nested too deep": (b"[" * 200_000, "not JSON ("),
    "no status": (b'{"data": {}}', 'status is missing or null, expected "success" or "error"'),
    "odd status": (b'{"status": "ok"}', "status is 'ok', expected"),
    "no data": (b'{"status": "success"}', "data is missing or null, expected an object"),
    "data a list": (b'{"status": "success", "data": []}', "data is [], expected an object"),
    "no result": (
        b'{"status": "success", "data": {"resultType": "vector"}}',
        "data.result is missing or null",
    ),
    "result an object": (
        b'{"status": "success", "data": {"result": {}}}',
        "data.result is {}, expected a list",
    ),
    "a matrix": (
        b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
        "data.resultType is 'matrix', expected \"vector\"",
    ),
    "sample a number": (vector(sample(), 3), "result[1] is 3, expected an object"),
    "no metric": (
        vector(sample(drop="metric")),
        "result[0].metric is missing or null, expected an object",
    ),
    "metric a list": (vector(sample(metric=[])), "result[0].metric is [], expected an object"),
    "no source_node": (
        vector(sample(drop="source_node")),
        "result[0].metric.source_node is missing or null",
    ),
    "no destination_node": (
        vector(sample(drop="destination_node")),
        "result[0].metric.destination_node is missing or null",
    ),
    "label a number": (
        vector(sample(source_node=5)),
        "result[0].metric.source_node is 5, expected a node name",
    ),
    "label a list": (
        vector(sample(destination_node=["b"])),
        "result[0].metric.destination_node is ['b'], expected a node name",
    ),
    "label empty": (
        vector(sample(source_node="")),
        "result[0].metric.source_node is '', expected a node name",
    ),
    "no value": (vector(sample(drop="value")), "result[0].value is missing or null"),
    "value a string": (
        vector(sample(value="0.5")),
        "result[0].value is '0.5', expected [time, \"number\"]",
    ),
    "value one long": (
        vector(sample(value=[1.7e9])),
        "result[0].value is [1700000000.0], expected",
    ),
    "value three long": (
        vector(sample(value=[1, "0", "1"])),
        "result[0].value is [1, '0', '1'], expected",
    ),
    "value a dict": (
        vector(sample(value={"1": "0.5"})),
        "result[0].value is {'1': '0.5'}, expected",
    ),
    "number abc": (
        vector(sample(value=[1.7e9, "abc"])),
        "result[0].value[1] is 'abc', expected a number",
    ),
    "number a dict": (
        vector(sample(value=[1.7e9, {}])),
        "result[0].value[1] is {}, expected a number",
    ),
    "number true": (
        vector(sample(value=[1.7e9, True])),
        "result[0].value[1] is True, expected a number",
    ),
    "number null": (
        vector(sample(value=[1.7e9, None])),
        "result[0].value[1] is missing or null, expected a number",
    ),
    "number too big": (vector(sample(value=[1.7e9, 10**400])), "result[0].value[1] is 1000"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_answer_is_one_line_exit_2(
    case: str, serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    body, what = UNREADABLE[case]
    server = serve(lambda handler, query: send(handler, body))
    code, out, err = run_main(capsys, "--prometheus", server.url)
    assert (code, out) == (2, "")
    prefix = (
        f"node-ping-exporter diagnose: Prometheus at {server.url} gave an answer it cannot read: "
    )
    assert err.startswith(prefix + what), err
    assert err.count("\n") == 1 and err.endswith("\n")


@pytest.mark.parametrize("case", ["a list", "no metric", "number a dict", "nested too deep"])
def test_unreadable_answer_as_a_process(
    case: str, serve: Callable[[Respond], FakePrometheus]
) -> None:
    """The same from `python -m exporter diagnose`: exit 2 (not 1, "problem found")."""
    body, what = UNREADABLE[case]
    server = serve(lambda handler, query: send(handler, body))
    result = run("--prometheus", server.url)
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert f"gave an answer it cannot read: {what}" in result.stderr


def test_error_answers_are_one_line(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """Prometheus's own errors, and a proxy's HTML error page: still one line, exit 2."""
    error = b'{"status": "error", "errorType": "bad_data", "error": "parse error\\nat line 2"}'
    server = serve(
        lambda handler, query: (
            send(handler, vector())
            if query == THRESHOLDS_QUERY
            else send(handler, error, status=400)
        )
    )
    code, _, err = run_main(capsys, "--prometheus", server.url)
    assert code == 2 and err.count("\n") == 1
    assert "refused a query (400): " in err and "parse error\\\\nat line 2" in err
    server = serve(lambda handler, query: send(handler, error))
    code, _, err = run_main(capsys, "--prometheus", server.url)
    assert code == 2 and err == (
        f"node-ping-exporter diagnose: Prometheus at {server.url} refused the query: "
        "parse error\\nat line 2\n"
    )
    page = b"<html>\n<body>\n502 Bad Gateway\n</body>\n</html>\n"
    server = serve(lambda handler, query: send(handler, page, status=502))
    code, _, err = run_main(capsys, "--prometheus", server.url)
    assert code == 2 and err.count("\n") == 1 and "(502): <html>\\n<body>\\n502" in err


def test_not_http_and_cut_short(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    def garbage(handler: BaseHTTPRequestHandler, query: str) -> None:
        handler.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")

    def cut_short(handler: BaseHTTPRequestHandler, query: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b'{"status": "success", "da')

    for respond, what in [(garbage, "BadStatusLine"), (cut_short, "cut short, 975 bytes missing")]:
        server = serve(respond)
        code, _, err = run_main(capsys, "--prometheus", server.url)
        assert code == 2 and err.count("\n") == 1
        assert f"at {server.url} gave an answer it cannot read: {what}" in err


# -- answers that never end ------------------------------------------------------------


def trickle(server_stop: threading.Event, handler: BaseHTTPRequestHandler, head: bool) -> None:
    """A byte every 0.2 s, forever (until the test ends): in the headers or the body."""
    if head:
        handler.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
    else:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        handler.wfile.write(b'{"status": "success", "data": {"result": [')
    while not server_stop.wait(0.2):
        handler.wfile.write(b" ")


@pytest.mark.parametrize("head", [False, True], ids=["body", "headers"])
def test_trickling_answer_stops_at_the_deadline(
    head: bool, serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each read gets a byte well within any socket timeout: only a deadline for the
    whole answer stops it."""
    stop = threading.Event()
    server = serve(lambda handler, query: trickle(stop, handler, head))
    try:
        start = time.monotonic()
        code, _, err = run_main(capsys, "--prometheus", server.url, "--timeout", "1")
        assert time.monotonic() - start < 5
    finally:
        stop.set()
    assert code == 2
    assert err == f"{PREFIX}Prometheus at {server.url} gave no complete answer within 1 s\n"


def test_trickling_answer_as_a_process(serve: Callable[[Respond], FakePrometheus]) -> None:
    stop = threading.Event()
    server = serve(lambda handler, query: trickle(stop, handler, head=False))
    try:
        start = time.monotonic()
        result = run("--prometheus", server.url, "--timeout", "1.5")
        assert time.monotonic() - start < 10
    finally:
        stop.set()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{PREFIX}Prometheus at {server.url} gave no complete answer within 1.5 s"
    ]


def test_endless_and_huge_answers_are_capped(
    serve: Callable[[Respond], FakePrometheus],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(diagnose_module, "MAX_ANSWER_BYTES", 1 << 20)
    stop = threading.Event()

    def flood(handler: BaseHTTPRequestHandler, query: str) -> None:
        handler.send_response(200)
        handler.end_headers()
        while not stop.is_set():
            handler.wfile.write(b" " * 65536)

    def declared(handler: BaseHTTPRequestHandler, query: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(10**12))
        handler.end_headers()
        stop.wait(30)

    try:
        server = serve(flood)
        code, _, err = run_main(capsys, "--prometheus", server.url)
        assert code == 2 and err.endswith("cannot read: longer than the 1048576-byte limit\n")
        server = serve(declared)
        start = time.monotonic()
        code, _, err = run_main(capsys, "--prometheus", server.url)
        assert time.monotonic() - start < 5
        assert code == 2 and err.endswith(
            ": 1000000000000 bytes announced, over the 1048576 limit\n"
        )
    finally:
        stop.set()


# -- hostile node names ------------------------------------------------------------------

EVIL = "evil\x1b[31m\nnode"


def test_control_characters_in_node_names_are_escaped(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["a", "b", EVIL]
    loss: dict[Pair, float | str] = {
        (s, d): (0.3 if EVIL in (s, d) else 0.0) for s in names for d in names if s != d
    }
    server = serve(
        recorded(
            answer(loss),
            node_ping__verdict__node_loss=per_node("x", {EVIL: 1.0}),
            node_ping__node_loss__ratio=per_node("x", {EVIL: 0.3}),
            node_ping__node_lossy_sources__ratio=per_node("x", {EVIL: 1.0}),
            node_ping__node_own_loss__ratio=per_node("x", {EVIL: 0.3}),
        )
    )
    code, out, err = run_main(capsys, "--prometheus", server.url)
    assert (code, err) == (1, "")
    assert "\x1b" not in out and all(line.isprintable() for line in out.splitlines())
    lines = out.splitlines()
    assert len(lines) == 2 + 3 + 1 + 1
    assert lines[1].split() == ["a", "b", "evil\\x1b[31m\\nnode"]
    assert lines[4].split() == ["evil\\x1b[31m\\nnode", "30.0", "30.0", "-"]
    assert lines[-1] == (
        "evil\\x1b[31m\\nnode or its link loses packets (30% from 2/2 nodes, and 30% of its "
        "own probes lost)"
    )
    code, out, _ = run_main(capsys, "--prometheus", server.url, "--output", "json")
    assert code == 1 and "\x1b" not in out
    assert json.loads(out)["verdicts"][0]["subject"] == EVIL


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("node-1", "node-1"),
        ("tab\there", "tab\\there"),
        ("back\\slash", "back\\\\slash"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("del\x7f", "del\\x7f"),
        ("c1\x9b31m", "c1\\x9b31m"),
        ("ünïcødé → ok", "ünïcødé → ok"),
    ],
)
def test_visible(name: str, shown: str) -> None:
    assert visible(name) == shown


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["--timeout", "0"], "argument --timeout: 0 is not a positive number of seconds"),
        (["--timeout", "nan"], "argument --timeout: nan is not a positive number of seconds"),
        (["--timeout", "soon"], "argument --timeout: invalid float value: 'soon'"),
        (["--loss-threshold", "nan"], "argument --loss-threshold: nan is not in [0, 1)"),
        (["--loss-threshold", "1.5"], "argument --loss-threshold: 1.5 is not in [0, 1)"),
        (["--rtt-threshold-ms", "inf"], "argument --rtt-threshold-ms: inf is not a number of ms"),
    ],
)
def test_bad_timeout(args: list[str], what: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--prometheus", "http://127.0.0.1:1", *args])
    assert exit.value.code == 2
    assert capsys.readouterr().err == f"{PREFIX}{what}\n"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:9090", "http://"])
def test_bad_prometheus_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--prometheus", url])
    assert exit.value.code == 2
    assert "is not an http(s) URL" in capsys.readouterr().err
